/* The public API (pvq.h) over model.c, vocab.c and the tokenizer, and over the CUDA backend when a context
 * asks for the GPU. */
#include "cuda_backend.h"
#include "errmsg.h"
#include "pvq.h"
#include "model.h"
#include "unicode.h"
#include "vocab.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct pvq_model {
    model m;
    tokenizer *tok;
    char *path; /* the CUDA backend loads the file itself */
};

struct pvq_context {
    const pvq_model *model;
    state s;               /* on the GPU only n_ctx, n_batch, logits_all, n_past and the logits are used */
    pvq_cuda_session *gpu; /* the whole model on the GPU, or NULL */
};

static pvq_status error(pvq_status st, char *err, size_t err_len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    err_vformat(err, err_len, fmt, ap);
    va_end(ap);
    return st;
}

const char *pvq_isa(void) { return isa_name(isa_active()); }

pvq_status pvq_set_isa(const char *name, char *err, size_t err_len) {
    char why[200];
    if (isa_select(name, why, sizeof why)) return error(PVQ_ERR_ARG, err, err_len, "%s", why);
    return PVQ_OK;
}

pvq_model_params pvq_model_default_params(void) {
    pvq_model_params p = {0};
    return p;
}

pvq_status pvq_model_load(const char *path, pvq_model **out, char *err, size_t err_len) {
    pvq_model_params p = pvq_model_default_params();
    return pvq_model_load_params(path, &p, out, err, err_len);
}

pvq_status pvq_model_load_params(const char *path, const pvq_model_params *params, pvq_model **out, char *err,
                                 size_t err_len) {
    *out = NULL;
    if (*isa_env_error()) return error(PVQ_ERR_ARG, err, err_len, "%s", isa_env_error());
    pvq_model *pm = calloc(1, sizeof *pm);
    if (!pm) return error(PVQ_ERR_NOMEM, err, err_len, "out of memory");
    char msg[512];
    if (params->pvq_repack && params->pvq_f32_activations) {
        free(pm);
        return error(PVQ_ERR_ARG, err, err_len, "pvq_repack and pvq_f32_activations exclude each other (the "
                     "repacked rows serve int8 activations)");
    }
    pvq_mode mode = params->pvq_f32_activations ? PVQ_MODE_F32 : params->pvq_repack ? PVQ_MODE_REPACKED : PVQ_MODE_NATIVE;
    if (model_load(&pm->m, path, mode, msg, sizeof msg)) {
        free(pm);
        /* model_load reports I/O problems as "cannot open/map ..." */
        return error(strncmp(msg, "cannot ", 7) ? PVQ_ERR_FORMAT : PVQ_ERR_IO, err, err_len, "%s", msg);
    }
    pm->tok = vocab_load(&pm->m.file, pm->m.n_vocab, msg, sizeof msg);
    if (!pm->tok) {
        model_free(&pm->m);
        free(pm);
        return error(PVQ_ERR_FORMAT, err, err_len, "%s: %s", path, msg);
    }
    if (!(pm->path = strdup(path))) {
        pvq_model_free(pm);
        return error(PVQ_ERR_NOMEM, err, err_len, "out of memory");
    }
    *out = pm;
    return PVQ_OK;
}

void pvq_model_free(pvq_model *pm) {
    if (!pm) return;
    free(pm->path);
    tokenizer_free(pm->tok);
    model_free(&pm->m);
    free(pm);
}

int32_t pvq_n_vocab(const pvq_model *pm) { return pm->m.n_vocab; }
int32_t pvq_n_ctx_train(const pvq_model *pm) { return pm->m.n_ctx_train; }
int32_t pvq_n_embd(const pvq_model *pm) { return pm->m.dim; }
int32_t pvq_n_layer(const pvq_model *pm) { return pm->m.n_layer; }

void pvq_model_describe(const pvq_model *pm, char *buf, size_t len) {
    const model *m = &pm->m;
    char wtype[96] = "", rot[48] = "";
    const pvq_layout *l = m->layers[0].wq.pvq.layout;
    if (l)
        snprintf(wtype, sizeof wtype, "pvq D=%d K=%d b=%d (%s kernels)", l->codec.D, l->codec.K, l->codec.gain_bits,
                 l->k[isa_active()].name);
    else
        snprintf(wtype, sizeof wtype, "%s", type_get(m->layers[0].wq.type)->name);
    if (l && m->layers[0].wq.pvq.repacked) strncat(wtype, ", repacked", sizeof wtype - strlen(wtype) - 1);
    if (l) strncat(wtype, m->layers[0].wq.pvq.f32_activations ? ", f32 activations" : ", int8 activations",
                   sizeof wtype - strlen(wtype) - 1);
    if (m->ffn_hadamard.base) snprintf(rot, sizeof rot, ", ffn Hadamard %d x %d", m->ffn_hadamard.h, m->ffn_hadamard.p);
    snprintf(buf, len, "%s: %d layers, dim %d, ffn %d, %d heads (%d kv), vocab %d, weights %s, output %s%s, kernel set %s",
             m->arch->name, m->n_layer, m->dim, m->ffn_dim, m->n_head, m->n_head_kv,
             m->n_vocab, wtype, m->output.data == m->tok_embd.data ? "tied" : type_get(m->output.type)->name, rot,
             type_simd_name());
}

int32_t pvq_token_bos(const pvq_model *pm) { return tokenizer_bos(pm->tok); }
int32_t pvq_token_eos(const pvq_model *pm) { return tokenizer_eos(pm->tok); }
int pvq_token_is_eog(const pvq_model *pm, int32_t id) { return tokenizer_is_eog(pm->tok, id); }
int pvq_adds_bos(const pvq_model *pm) { return tokenizer_adds_bos(pm->tok); }

pvq_status pvq_tokenize(const pvq_model *pm, const char *text, size_t len, int add_special, int parse_special,
                        int32_t *out, int32_t max_tokens, int32_t *n_out, char *err, size_t err_len) {
    *n_out = 0;
    if (max_tokens < 0) return error(PVQ_ERR_ARG, err, err_len, "negative max_tokens");
    int32_t n = tokenizer_encode(pm->tok, text, len, add_special, parse_special, out, max_tokens);
    switch (n) {
    case TOK_ERR_UTF8: return error(PVQ_ERR_UTF8, err, err_len, "input is not valid UTF-8");
    case TOK_ERR_NOMEM: return error(PVQ_ERR_NOMEM, err, err_len, "out of memory while tokenizing");
    case TOK_ERR_TOO_LONG: return error(PVQ_ERR_TOO_LONG, err, err_len, "input longer than %zu bytes", TOK_MAX_INPUT);
    case TOK_ERR_ID: return error(PVQ_ERR_ARG, err, err_len, "bad token id");
    default: break;
    }
    if (n < 0) {
        *n_out = -n;
        return error(PVQ_ERR_TOO_LONG, err, err_len, "text needs %d tokens, room for %d", -n, max_tokens);
    }
    *n_out = n;
    return PVQ_OK;
}

int32_t pvq_token_to_piece(const pvq_model *pm, int32_t id, char *buf, int32_t buf_len, int special) {
    int32_t n = tokenizer_piece(pm->tok, id, buf, buf_len, special);
    return n == TOK_ERR_ID ? INT32_MIN : n;
}

size_t pvq_utf8_incomplete(const char *buf, size_t len) { return tokenizer_utf8_incomplete(buf, len); }
size_t pvq_utf8_repair(const char *in, size_t len, int final, char *out, size_t *out_len) {
    return utf8_repair((const uint8_t *)in, len, final, (uint8_t *)out, out_len);
}

uint16_t pvq_f32_to_f16(float f) { return f32_to_fp16(f); }
float pvq_f16_to_f32(uint16_t h) { return fp16_to_f32(h); }

pvq_context_params pvq_context_default_params(void) { return (pvq_context_params){0}; }

/* The CUDA backend, loaded at the first context that asks for the GPU and kept for the process: dlopen, so
 * that libpvq.so neither needs CUDA to build nor libcudart to load. NULL when it is absent or finds no usable
 * device; the reason is printed once. */
static const pvq_cuda_backend *gpu_backend;
static pthread_once_t gpu_once = PTHREAD_ONCE_INIT;

/* PVQ_CUDA_LIB names the library; otherwise libpvq_cuda.so next to libpvq.so (an install), then the build
 * tree's ../build-cuda/libpvq_cuda.so. Returns the handle, or NULL with the reason. */
static void *gpu_dlopen(char *why, size_t why_len) {
    const char *env = getenv("PVQ_CUDA_LIB");
    if (env && *env) {
        void *h = dlopen(env, RTLD_NOW | RTLD_LOCAL);
        if (!h) err_fail(why, why_len, "cannot load the CUDA backend (PVQ_CUDA_LIB): %s", dlerror());
        return h;
    }
    Dl_info info;
    char dir[PATH_MAX] = ".", cand[2][PATH_MAX + 32];
    if (dladdr((void *)pvq_context_new, &info) && info.dli_fname && strrchr(info.dli_fname, '/'))
        snprintf(dir, sizeof dir, "%.*s", (int)(strrchr(info.dli_fname, '/') - info.dli_fname), info.dli_fname);
    snprintf(cand[0], sizeof cand[0], "%s/libpvq_cuda.so", dir);
    snprintf(cand[1], sizeof cand[1], "%s/../build-cuda/libpvq_cuda.so", dir);
    for (int i = 0; i < 2; i++) {
        if (access(cand[i], F_OK)) continue;
        void *h = dlopen(cand[i], RTLD_NOW | RTLD_LOCAL);
        if (!h) err_fail(why, why_len, "cannot load the CUDA backend: %s", dlerror());
        return h;
    }
    err_fail(why, why_len, "no CUDA backend: neither %s nor %s exists (make cuda builds it)", cand[0], cand[1]);
    return NULL;
}

static void gpu_init(void) {
    char why[1024];
    void *h = gpu_dlopen(why, sizeof why);
    if (h) {
        const pvq_cuda_backend *b = dlsym(h, PVQ_CUDA_BACKEND_SYMBOL);
        if (!b || b->abi != PVQ_CUDA_BACKEND_ABI)
            err_fail(why, sizeof why, "the CUDA backend has no %s of ABI %d, as this libpvq needs (rebuild it with "
                     "make cuda)", PVQ_CUDA_BACKEND_SYMBOL, PVQ_CUDA_BACKEND_ABI);
        else if (!b->probe(why, sizeof why))
            gpu_backend = b;
        /* the handle stays open even when unused: unloading cudart after it initialised is not safe */
    }
    if (!gpu_backend) fprintf(stderr, "pvq: %s; running on the CPU\n", why);
}

pvq_status pvq_context_new(const pvq_model *pm, const pvq_context_params *p, pvq_context **out, char *err,
                           size_t err_len) {
    *out = NULL;
    int n_ctx = p->n_ctx > 0 ? p->n_ctx : (pm->m.n_ctx_train < 4096 ? pm->m.n_ctx_train : 4096);
    int n_batch = p->n_batch > 0 ? p->n_batch : 512;
    int n_threads = p->n_threads > 0 ? p->n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (n_threads < 1) n_threads = 1;
    if (p->n_ctx < 0 || p->n_batch < 0 || p->n_threads < 0 || n_ctx > (1 << 20) || n_threads > 1024)
        return error(PVQ_ERR_ARG, err, err_len, "bad context parameters (n_ctx %d, n_batch %d, threads %d)",
                     p->n_ctx, p->n_batch, p->n_threads);
    if (n_batch > n_ctx) n_batch = n_ctx;
    int ngl = p->n_gpu_layers, n_layer = pm->m.n_layer;
    if (ngl < -1 || (ngl > 0 && ngl < n_layer))
        return error(PVQ_ERR_ARG, err, err_len, "n_gpu_layers %d: this runtime puts all %d layers on the GPU (-1, or "
                     ">= %d) or none (0); partial offload is not supported (it would need per-layer entry points in "
                     "the CPU forward pass)", ngl, n_layer, n_layer);
    if (ngl) pthread_once(&gpu_once, gpu_init);
    pvq_context *c = calloc(1, sizeof *c);
    if (!c) return error(PVQ_ERR_NOMEM, err, err_len, "out of memory");
    char msg[512];
    if (ngl && gpu_backend) {
        c->s.n_ctx = n_ctx, c->s.n_batch = n_batch, c->s.logits_all = p->logits_all != 0;
        if (!(c->s.logits = malloc((size_t)(c->s.logits_all ? n_batch : 1) * pm->m.n_vocab * sizeof(float)))) {
            free(c);
            return error(PVQ_ERR_NOMEM, err, err_len, "out of memory");
        }
        if (gpu_backend->open(pm->path, n_ctx, n_batch, &c->gpu, msg, sizeof msg)) {
            free(c->s.logits);
            free(c);
            return error(PVQ_ERR_DEVICE, err, err_len, "cannot put the model on the GPU: %s", msg);
        }
    } else if (state_new(&c->s, &pm->m, n_ctx, n_batch, n_threads, p->logits_all != 0, msg, sizeof msg)) {
        free(c);
        return error(PVQ_ERR_NOMEM, err, err_len, "%s", msg);
    }
    c->model = pm;
    *out = c;
    return PVQ_OK;
}

void pvq_context_free(pvq_context *c) {
    if (!c) return;
    if (c->gpu) {
        gpu_backend->close(c->gpu);
        free(c->s.logits);
    } else {
        state_free(&c->s);
    }
    free(c);
}

int32_t pvq_n_ctx(const pvq_context *c) { return c->s.n_ctx; }
int32_t pvq_n_past(const pvq_context *c) { return c->s.n_past; }

void pvq_kv_truncate(pvq_context *c, int32_t n_keep) {
    if (n_keep >= 0 && n_keep < c->s.n_past) c->s.n_past = n_keep;
    if (c->gpu) gpu_backend->truncate(c->gpu, c->s.n_past);
}

/* The GPU returns the last token's logits per call, so logits_all evaluates one token at a time. */
static pvq_status gpu_eval(pvq_context *c, const int32_t *tokens, int32_t n, char *err, size_t err_len) {
    const int32_t nv = c->model->m.n_vocab, step = c->s.logits_all ? 1 : c->s.n_batch;
    char msg[512];
    c->s.n_logits = 0;
    for (int32_t i = 0; i < n; i += step) {
        int32_t k = n - i < step ? n - i : step;
        float *logits = c->s.logits + (c->s.logits_all ? (size_t)i * nv : 0);
        if (gpu_backend->eval(c->gpu, tokens + i, k, logits, msg, sizeof msg))
            return error(PVQ_ERR_DEVICE, err, err_len, "GPU: %s", msg);
        c->s.n_past += k;
        c->s.n_logits = c->s.logits_all ? i + 1 : 1;
    }
    return PVQ_OK;
}

pvq_status pvq_eval(pvq_context *c, const int32_t *tokens, int32_t n, char *err, size_t err_len) {
    const model *m = &c->model->m;
    if (n <= 0) return error(PVQ_ERR_ARG, err, err_len, "no tokens to evaluate");
    if (n > c->s.n_ctx - c->s.n_past)
        return error(PVQ_ERR_CONTEXT_FULL, err, err_len, "%d tokens do not fit: context of %d holds %d already", n,
                     c->s.n_ctx, c->s.n_past);
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->n_vocab)
            return error(PVQ_ERR_ARG, err, err_len, "token id %d outside the vocabulary (%d)", tokens[i], m->n_vocab);
    /* with logits_all the logits buffer holds one batch: the caller reads them per eval */
    if (c->s.logits_all && n > c->s.n_batch)
        return error(PVQ_ERR_ARG, err, err_len, "with logits_all, eval at most n_batch (%d) tokens at a time",
                     c->s.n_batch);
    if (c->gpu) return gpu_eval(c, tokens, n, err, err_len);
    for (int32_t i = 0; i < n; i += c->s.n_batch)
        forward(m, &c->s, tokens + i, n - i < c->s.n_batch ? n - i : c->s.n_batch);
    return PVQ_OK;
}

const float *pvq_logits(const pvq_context *c, int32_t i) {
    int32_t n = c->s.n_logits;
    if (i < 0) i += n;
    if (i < 0 || i >= n) return NULL;
    return c->s.logits + (size_t)i * c->model->m.n_vocab;
}
