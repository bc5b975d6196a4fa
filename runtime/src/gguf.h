/* GGUF v2/v3 reader over a read-only mmap. gguf_open validates the whole header (magic, version,
 * counts, every string and array length, tensor dims and type ids, offsets, alignment, that each
 * tensor lies inside the file) before anything else reads it; afterwards lookups cannot go out of
 * bounds. Tensor data and strings point into the mapping: nothing is copied. */
#ifndef PVQ_GGUF_H
#define PVQ_GGUF_H

#include <stddef.h>
#include <stdint.h>

enum gguf_vtype {
    GGUF_U8 = 0, GGUF_I8 = 1, GGUF_U16 = 2, GGUF_I16 = 3, GGUF_U32 = 4, GGUF_I32 = 5,
    GGUF_F32 = 6, GGUF_BOOL = 7, GGUF_STRING = 8, GGUF_ARRAY = 9, GGUF_U64 = 10, GGUF_I64 = 11,
    GGUF_F64 = 12, GGUF_NVTYPES
};

#define GGUF_MAX_DIMS 4

typedef struct {
    const char *ptr; /* not NUL-terminated */
    uint64_t len;
} gguf_str;

typedef struct {
    gguf_str key;
    uint32_t type;      /* enum gguf_vtype */
    uint32_t elem_type; /* for GGUF_ARRAY: the element type (never ARRAY) */
    uint64_t n;         /* for GGUF_ARRAY: element count, else 1 */
    const uint8_t *data; /* the value (for arrays: the first element) inside the mapping */
} gguf_kv;

typedef struct {
    gguf_str name;
    uint32_t n_dims;
    int64_t ne[GGUF_MAX_DIMS]; /* ne[0] is the contiguous (row) dimension; unused dims are 1 */
    uint32_t type;             /* ggml type id, known to types.h */
    uint64_t offset;           /* relative to the data section */
    uint64_t nbytes;
    const void *data;
} gguf_tensor;

typedef struct {
    void *map;
    size_t size;
    uint32_t version;
    uint64_t n_kv, n_tensors;
    gguf_kv *kv;
    gguf_tensor *tensors;
    uint64_t alignment;
} gguf_file;

/* Returns 0, or -1 with a message in err (file is then empty and need not be closed). */
int gguf_open(gguf_file *f, const char *path, char *err, size_t err_len);
void gguf_close(gguf_file *f);

const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key);
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name);

/* Typed getters: 0 on success, -1 when the key is absent or has another type. Integer getters
 * accept any integer type whose value fits. */
int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out);
int gguf_get_i32(const gguf_file *f, const char *key, int32_t *out);
int gguf_get_f32(const gguf_file *f, const char *key, float *out);
int gguf_get_bool(const gguf_file *f, const char *key, int *out);
int gguf_get_str(const gguf_file *f, const char *key, gguf_str *out);

/* For an array of strings: fills out[0..n) (caller allocates kv->n entries). */
void gguf_str_array(const gguf_kv *kv, gguf_str *out);

#endif
