/* GGUF reader: one pass over the header with a bounds-checked cursor, then tensor checks. */
#include "errmsg.h"
#include "gguf.h"
#include "types.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Far above any real model, low enough that counts cannot overflow allocations. */
#define MAX_KV      (1u << 20)
#define MAX_TENSORS (1u << 20)
#define MAX_NAME    (1u << 16)

typedef struct {
    const uint8_t *p, *end;
    char *err;
    size_t err_len;
} cursor;


static int take(cursor *c, void *out, size_t n, const char *what) {
    if ((size_t)(c->end - c->p) < n)
        return err_fail(c->err, c->err_len, "truncated file: %s runs past the end", what);
    memcpy(out, c->p, n);
    c->p += n;
    return 0;
}

static int take_str(cursor *c, gguf_str *s, const char *what) {
    uint64_t len = 0;
    if (take(c, &len, 8, what)) return -1;
    if (len > (uint64_t)(c->end - c->p))
        return err_fail(c->err, c->err_len, "%s: string length %llu runs past the end of the file", what,
                    (unsigned long long)len);
    s->ptr = (const char *)c->p;
    s->len = len;
    c->p += len;
    return 0;
}

static const size_t SCALAR_SIZE[GGUF_NVTYPES] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

/* Skips over one value of type t (not an array), checking it lies inside the file. */
static int skip_value(cursor *c, uint32_t t, const char *key) {
    if (t == GGUF_STRING) {
        gguf_str s;
        return take_str(c, &s, key);
    }
    size_t n = SCALAR_SIZE[t];
    if ((size_t)(c->end - c->p) < n) return err_fail(c->err, c->err_len, "truncated file: value of %s", key);
    c->p += n;
    return 0;
}

static int read_kv(cursor *c, gguf_kv *kv, uint64_t i) {
    char what[64];
    snprintf(what, sizeof what, "key %llu", (unsigned long long)i);
    if (take_str(c, &kv->key, what)) return -1;
    if (kv->key.len == 0 || kv->key.len > MAX_NAME)
        return err_fail(c->err, c->err_len, "key %llu: bad key length %llu", (unsigned long long)i,
                    (unsigned long long)kv->key.len);
    char key[96];
    snprintf(key, sizeof key, "%.*s", (int)(kv->key.len < 80 ? kv->key.len : 80), kv->key.ptr);
    if (take(c, &kv->type, 4, key)) return -1;
    if (kv->type >= GGUF_NVTYPES) return err_fail(c->err, c->err_len, "%s: unknown value type %u", key, kv->type);
    kv->n = 1;
    kv->elem_type = kv->type;
    if (kv->type == GGUF_ARRAY) {
        if (take(c, &kv->elem_type, 4, key) || take(c, &kv->n, 8, key)) return -1;
        if (kv->elem_type >= GGUF_NVTYPES || kv->elem_type == GGUF_ARRAY)
            return err_fail(c->err, c->err_len, "%s: bad array element type %u", key, kv->elem_type);
        if (kv->elem_type != GGUF_STRING && kv->n > (uint64_t)(c->end - c->p) / SCALAR_SIZE[kv->elem_type])
            return err_fail(c->err, c->err_len, "%s: array of %llu elements runs past the end of the file", key,
                        (unsigned long long)kv->n);
    }
    kv->data = c->p;
    if (kv->type == GGUF_ARRAY && kv->elem_type != GGUF_STRING) {
        c->p += kv->n * SCALAR_SIZE[kv->elem_type];
        return 0;
    }
    for (uint64_t j = 0; j < kv->n; j++)
        if (skip_value(c, kv->elem_type, key)) return -1;
    return 0;
}

static int read_tensor_info(cursor *c, gguf_tensor *t, uint64_t i) {
    char what[64];
    snprintf(what, sizeof what, "tensor info %llu", (unsigned long long)i);
    if (take_str(c, &t->name, what)) return -1;
    if (t->name.len == 0 || t->name.len > MAX_NAME)
        return err_fail(c->err, c->err_len, "%s: bad name length %llu", what, (unsigned long long)t->name.len);
    char name[96];
    snprintf(name, sizeof name, "tensor '%.*s'", (int)(t->name.len < 64 ? t->name.len : 64), t->name.ptr);
    if (take(c, &t->n_dims, 4, name)) return -1;
    if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
        return err_fail(c->err, c->err_len, "%s: %u dimensions (1 to %d supported)", name, t->n_dims, GGUF_MAX_DIMS);
    uint64_t total = 1;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
        uint64_t ne = 1;
        if (d < t->n_dims && take(c, &ne, 8, name)) return -1;
        if (ne == 0 || ne > (1ull << 40) || total > (1ull << 48) / ne)
            return err_fail(c->err, c->err_len, "%s: absurd dimension %llu", name, (unsigned long long)ne);
        total *= ne;
        t->ne[d] = (int64_t)ne;
    }
    if (take(c, &t->type, 4, name) || take(c, &t->offset, 8, name)) return -1;
    const type_traits *tt = type_get(t->type);
    if (!tt) return err_fail(c->err, c->err_len, "%s: unsupported tensor type %u", name, t->type);
    if (t->ne[0] % tt->block)
        return err_fail(c->err, c->err_len, "%s: row of %lld is not a multiple of the %s block (%lld)", name,
                    (long long)t->ne[0], tt->name, (long long)tt->block);
    if (type_row_bytes(t->type, t->ne[0]) == 0) /* PVQ: the block depends on the layout in the id */
        return err_fail(c->err, c->err_len, "%s: row of %lld is not a whole number of blocks of %s type %#x", name,
                    (long long)t->ne[0], tt->name, t->type);
    t->nbytes = (uint64_t)type_row_bytes(t->type, t->ne[0]) * (total / (uint64_t)t->ne[0]);
    return 0;
}

static int cmp_names(const void *a, const void *b) {
    const gguf_tensor *x = *(const gguf_tensor *const *)a, *y = *(const gguf_tensor *const *)b;
    size_t n = x->name.len < y->name.len ? x->name.len : y->name.len;
    int r = memcmp(x->name.ptr, y->name.ptr, n);
    return r ? r : (x->name.len > y->name.len) - (x->name.len < y->name.len);
}

static int check_unique_names(gguf_file *f, char *err, size_t err_len) {
    if (f->n_tensors < 2) return 0;
    const gguf_tensor **s = malloc(f->n_tensors * sizeof *s);
    if (!s) return err_fail(err, err_len, "out of memory");
    for (uint64_t i = 0; i < f->n_tensors; i++) s[i] = &f->tensors[i];
    qsort(s, f->n_tensors, sizeof *s, cmp_names);
    int rc = 0;
    for (uint64_t i = 1; i < f->n_tensors && !rc; i++)
        if (!cmp_names(&s[i - 1], &s[i]))
            rc = err_fail(err, err_len, "duplicate tensor name '%.*s'", (int)(s[i]->name.len < 64 ? s[i]->name.len : 64),
                      s[i]->name.ptr);
    free(s);
    return rc;
}

static int parse(gguf_file *f, char *err, size_t err_len) {
    cursor c = {f->map, (const uint8_t *)f->map + f->size, err, err_len};
    char magic[4];
    if (take(&c, magic, 4, "magic")) return -1;
    if (memcmp(magic, "GGUF", 4)) return err_fail(err, err_len, "not a GGUF file (bad magic)");
    if (take(&c, &f->version, 4, "version")) return -1;
    if (f->version != 2 && f->version != 3)
        return err_fail(err, err_len, "unsupported GGUF version %u (2 and 3 are supported)", f->version);
    if (take(&c, &f->n_tensors, 8, "tensor count") || take(&c, &f->n_kv, 8, "key count")) return -1;
    /* each entry takes at least 16 (kv) or 32 (tensor info) bytes: bound counts by the file size */
    if (f->n_kv > MAX_KV || f->n_kv > f->size / 16)
        return err_fail(err, err_len, "absurd key count %llu", (unsigned long long)f->n_kv);
    if (f->n_tensors > MAX_TENSORS || f->n_tensors > f->size / 32)
        return err_fail(err, err_len, "absurd tensor count %llu", (unsigned long long)f->n_tensors);
    f->kv = calloc(f->n_kv ? f->n_kv : 1, sizeof *f->kv);
    f->tensors = calloc(f->n_tensors ? f->n_tensors : 1, sizeof *f->tensors);
    if (!f->kv || !f->tensors) return err_fail(err, err_len, "out of memory");
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (read_kv(&c, &f->kv[i], i)) return -1;
    f->alignment = 32;
    const gguf_kv *al = gguf_find_kv(f, "general.alignment");
    if (al) {
        uint32_t a;
        if (gguf_get_u32(f, "general.alignment", &a) || a == 0 || (a & (a - 1)) || a > (1u << 20))
            return err_fail(err, err_len, "general.alignment must be a power of two up to 1 MiB");
        f->alignment = a;
    }
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (read_tensor_info(&c, &f->tensors[i], i)) return -1;
    uint64_t header = (uint64_t)(c.p - (const uint8_t *)f->map);
    uint64_t data_start = (header + f->alignment - 1) / f->alignment * f->alignment;
    if (f->n_tensors && data_start > f->size) return err_fail(err, err_len, "truncated file: no tensor data");
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        int nl = (int)(t->name.len < 64 ? t->name.len : 64);
        if (t->offset % f->alignment)
            return err_fail(err, err_len, "tensor '%.*s': offset %llu not aligned to %llu", nl, t->name.ptr,
                        (unsigned long long)t->offset, (unsigned long long)f->alignment);
        if (t->offset > f->size - data_start || t->nbytes > f->size - data_start - t->offset)
            return err_fail(err, err_len, "tensor '%.*s' (offset %llu, %llu bytes) lies outside the file", nl,
                        t->name.ptr, (unsigned long long)t->offset, (unsigned long long)t->nbytes);
        t->data = (const uint8_t *)f->map + data_start + t->offset;
    }
    return check_unique_names(f, err, err_len);
}

int gguf_open(gguf_file *f, const char *path, char *err, size_t err_len) {
    memset(f, 0, sizeof *f);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return err_fail(err, err_len, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return err_fail(err, err_len, "%s is not a regular file", path);
    }
    if (st.st_size < 24) {
        close(fd);
        return err_fail(err, err_len, "%s: truncated file (%lld bytes, no GGUF header)", path, (long long)st.st_size);
    }
    f->size = (size_t)st.st_size;
    f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        return err_fail(err, err_len, "cannot map %s: %s", path, strerror(errno));
    }
    char msg[400];
    if (parse(f, msg, sizeof msg)) {
        gguf_close(f);
        return err_fail(err, err_len, "%s: %s", path, msg);
    }
    return 0;
}

void gguf_close(gguf_file *f) {
    if (f->map) munmap(f->map, f->size);
    free(f->kv);
    free(f->tensors);
    memset(f, 0, sizeof *f);
}

static int str_is(gguf_str s, const char *z) { return strlen(z) == s.len && !memcmp(s.ptr, z, s.len); }

const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key) {
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (str_is(f->kv[i].key, key)) return &f->kv[i];
    return NULL;
}

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name) {
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (str_is(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

/* Reads an integer-typed scalar as int64 (u64 values above INT64_MAX are rejected). */
static int get_int(const gguf_file *f, const char *key, int64_t *out) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) return -1;
    const uint8_t *d = kv->data;
    switch (kv->type) {
    case GGUF_U8: *out = *d; return 0;
    case GGUF_I8: *out = (int8_t)*d; return 0;
    case GGUF_U16: { uint16_t v; memcpy(&v, d, 2); *out = v; return 0; }
    case GGUF_I16: { int16_t v; memcpy(&v, d, 2); *out = v; return 0; }
    case GGUF_U32: { uint32_t v; memcpy(&v, d, 4); *out = v; return 0; }
    case GGUF_I32: { int32_t v; memcpy(&v, d, 4); *out = v; return 0; }
    case GGUF_U64: { uint64_t v; memcpy(&v, d, 8); if (v > INT64_MAX) return -1; *out = (int64_t)v; return 0; }
    case GGUF_I64: { int64_t v; memcpy(&v, d, 8); *out = v; return 0; }
    default: return -1;
    }
}

int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out) {
    int64_t v;
    if (get_int(f, key, &v) || v < 0 || v > UINT32_MAX) return -1;
    *out = (uint32_t)v;
    return 0;
}

int gguf_get_i32(const gguf_file *f, const char *key, int32_t *out) {
    int64_t v;
    if (get_int(f, key, &v) || v < INT32_MIN || v > INT32_MAX) return -1;
    *out = (int32_t)v;
    return 0;
}

int gguf_get_f32(const gguf_file *f, const char *key, float *out) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) return -1;
    if (kv->type == GGUF_F32) {
        memcpy(out, kv->data, 4);
        return 0;
    }
    if (kv->type == GGUF_F64) {
        double v;
        memcpy(&v, kv->data, 8);
        *out = (float)v;
        return 0;
    }
    return -1;
}

int gguf_get_bool(const gguf_file *f, const char *key, int *out) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv || kv->type != GGUF_BOOL) return -1;
    *out = kv->data[0] != 0;
    return 0;
}

int gguf_get_str(const gguf_file *f, const char *key, gguf_str *out) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv || kv->type != GGUF_STRING) return -1;
    memcpy(&out->len, kv->data, 8);
    out->ptr = (const char *)kv->data + 8;
    return 0;
}

void gguf_str_array(const gguf_kv *kv, gguf_str *out) {
    const uint8_t *p = kv->data;
    for (uint64_t i = 0; i < kv->n; i++) {
        memcpy(&out[i].len, p, 8);
        out[i].ptr = (const char *)p + 8;
        p += 8 + out[i].len;
    }
}
