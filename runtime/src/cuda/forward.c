/* A model on the GPU: weights, norms, the KV cache and scratch in device memory, and the forward pass
 * as a sequence of kernel launches (the same steps as model.c's forward). */
#include "errmsg.h"
#include "kernels.h"
#include "plan.h"
#include "pvq_cuda.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_LAYOUTS = 16 };

typedef struct {
    cuda_weight wq, wk, wv, wo, w_gate, w_up, w_down;
    float *attn_norm, *ffn_norm, *bq, *bk, *bv;   /* bq, bk, bv: NULL when the model has none */
} cuda_layer;

typedef struct {
    uint32_t type;
    pvq_cuda_tables tab;
    void *dev;
} cuda_layout;

struct pvq_cuda_model {
    int n_layer, dim, n_head, n_head_kv, head_dim, ffn_dim, n_vocab, rope_dim, rope_neox;
    float rms_eps, rope_base;
    cuda_weight tok_embd, output, output_mix;     /* output_mix.data NULL: none (model.h) */
    float *out_norm;
    cuda_layer *layers;
    int hadamard_h, hadamard_p;                   /* h == 0: no transform */
    float hadamard_scale;
    int8_t *hadamard_base;
    cuda_layout layouts[MAX_LAYOUTS];
    int n_layouts;
    void **allocs;                                /* every device allocation, freed together */
    size_t n_allocs, cap_allocs, weight_bytes;
    int n_ctx, n_batch, n_past;
    int *n_past_dev;                              /* n_past in device memory (read by the KV store and attention) */
    cudaGraphExec_t decode_graph;                 /* one decode step (T = 1), captured at the first one */
    int graph_off;                                /* PVQ_CUDA_GRAPHS=0, PVQ_CUDA_SYNC=1, or the capture failed:
                                                   * direct launches */
    int f32_act;                                  /* PVQ GEMV on float32 x, for every T (pvq_cuda_set_f32_activations) */
    uint16_t *k_cache, *v_cache;                  /* [layer][n_ctx][kv_dim] fp16 */
    float *x, *xb, *xb2, *q, *k, *v, *hb, *hb2, *rope, *logits;
    void *q8;                                     /* the PVQ GEMV's int8 activations (pvqk_q8_scratch_bytes) */
    void *q8_0;                                   /* Q8_0 weights' activations (densek_q8_0_scratch_bytes) */
    float *tile_scale;                            /* the prefill tiles' per-token scales (n_batch) */
    int32_t *tokens;
    float *host_rope;
};

#define CK(call)                                                                                       \
    do {                                                                                               \
        cudaError_t e_ = (call);                                                                       \
        if (e_ != cudaSuccess) return pvqk_fail(err, err_len, #call, e_);                              \
    } while (0)

static void *dev_alloc(pvq_cuda_model *g, size_t bytes, char *err, size_t err_len)
{
    void *p = NULL;
    if (g->n_allocs == g->cap_allocs) {
        size_t cap = g->cap_allocs ? 2 * g->cap_allocs : 64;
        void **a = realloc(g->allocs, cap * sizeof *a);
        if (!a) { err_fail(err, err_len, "out of memory"); return NULL; }
        g->allocs = a, g->cap_allocs = cap;
    }
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        err_fail(err, err_len, "CUDA: cannot allocate %zu bytes of device memory: %s", bytes, cudaGetErrorString(e));
        return NULL;
    }
    g->allocs[g->n_allocs++] = p;
    return p;
}

static void *dev_upload(pvq_cuda_model *g, const void *src, size_t bytes, size_t pad, char *err, size_t err_len)
{
    uint8_t *p = dev_alloc(g, bytes + pad, err, err_len);
    if (!p) return NULL;
    cudaError_t e = cudaMemcpy(p, src, bytes, cudaMemcpyHostToDevice);
    if (e == cudaSuccess && pad) e = cudaMemset(p + bytes, 0, pad);
    if (e != cudaSuccess) {
        pvqk_fail(err, err_len, "upload", e);
        return NULL;
    }
    return p;
}

static int is_pvq(uint32_t type) { return (type & 0xF0000000u) == PVQ_TYPE_BASE; }

/* The device tables of a layout, built and uploaded once per model. */
static const cuda_layout *layout_for(pvq_cuda_model *g, const pvq_codec *c, uint32_t type, char *err, size_t err_len)
{
    for (int i = 0; i < g->n_layouts; i++)
        if (g->layouts[i].type == type) return &g->layouts[i];
    if (g->n_layouts == MAX_LAYOUTS) {
        err_fail(err, err_len, "more than %d PVQ layouts in one model", MAX_LAYOUTS);
        return NULL;
    }
    cuda_layout *L = &g->layouts[g->n_layouts];
    if (pvq_cuda_tables_build(&L->tab, c)) {
        err_fail(err, err_len, "out of memory");
        return NULL;
    }
    if (!(L->dev = dev_upload(g, L->tab.blob, L->tab.bytes, 0, err, err_len))) {
        pvq_cuda_tables_free(&L->tab);
        return NULL;
    }
    L->type = type;
    g->n_layouts++;
    return L;
}

/* A PVQ matrix: codec from the type id and the file's levels, every row validated, scales as float32. */
static int upload_pvq(pvq_cuda_model *g, const gguf_file *f, const char *name, const weight *w, cuda_weight *out,
                      char *err, size_t err_len)
{
    char key[160], msg[256];
    snprintf(key, sizeof key, "pvq.gain_levels.%s", name);
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv || kv->type != GGUF_ARRAY || kv->elem_type != GGUF_F32)
        return err_fail(err, err_len, "%s: missing metadata %s (array of float32)", name, key);
    float levels[1 << PVQ_MAX_GAIN_BITS];
    if (kv->n > (1u << PVQ_MAX_GAIN_BITS))
        return err_fail(err, err_len, "%s: %llu gain levels", name, (unsigned long long)kv->n);
    memcpy(levels, kv->data, kv->n * sizeof(float));
    pvq_codec c;
    if (pvq_codec_init(&c, w->type, levels, kv->n, msg, sizeof msg))
        return err_fail(err, err_len, "%s: %s", name, msg);
    snprintf(key, sizeof key, "%s.pvq_scale", name);
    const gguf_tensor *st = gguf_find_tensor(f, key), *wt = gguf_find_tensor(f, name);
    int rc = -1;
    float *scales = NULL;
    if (!st || st->type != 1 /* F16 */ || st->ne[0] != w->n_out) {
        err_fail(err, err_len, "%s: missing tensor %s (F16, %lld values)", name, key, (long long)w->n_out);
        goto done;
    }
    if (pvq_validate_tensor(&c, w->data, wt->nbytes, w->n_in, w->n_out, st->data, msg, sizeof msg)) {
        err_fail(err, err_len, "%s: %s", name, msg);
        goto done;
    }
    if (!(scales = malloc((size_t)w->n_out * sizeof(float)))) {
        err_fail(err, err_len, "out of memory");
        goto done;
    }
    for (int64_t r = 0; r < w->n_out; r++) scales[r] = pvq_half_to_float(((const uint16_t *)st->data)[r]);
    const cuda_layout *L = layout_for(g, &c, w->type, err, err_len);
    const float *dev_levels = dev_upload(g, levels, kv->n * sizeof(float), 0, err, err_len);
    const float *dev_scales = dev_upload(g, scales, (size_t)w->n_out * sizeof(float), 0, err, err_len);
    const uint8_t *data = dev_upload(g, w->data, wt->nbytes, 16, err, err_len);
    if (!L || !dev_levels || !dev_scales || !data) goto done;
    out->type = w->type, out->pvq = 1, out->n_in = w->n_in, out->n_out = w->n_out;
    out->row_bytes = pvq_row_bytes(&c, w->n_in);
    out->data = data, out->row_scales = dev_scales;
    out->tables = pvq_cuda_tables_bind(&L->tab, L->dev, dev_levels);
    cudaError_t e = pvqk_prepare(out);
    if (e != cudaSuccess) {
        pvqk_fail(err, err_len, "pvqk_prepare", e);
        goto done;
    }
    g->weight_bytes += wt->nbytes + (size_t)w->n_out * 2;
    rc = 0;
done:
    free(scales);
    pvq_codec_free(&c);
    return rc;
}

static int upload_weight(pvq_cuda_model *g, const model *m, const char *name, const weight *w, cuda_weight *out,
                         char *err, size_t err_len)
{
    memset(out, 0, sizeof *out);
    if (is_pvq(w->type)) return upload_pvq(g, &m->file, name, w, out, err, err_len);
    const type_traits *tt = type_get(w->type);
    size_t rb = type_row_bytes(w->type, w->n_in);
    if (!tt || rb == 0 || (w->type != T_F32 && w->type != T_F16 && w->type != T_BF16 && w->type != T_Q8_0))
        return err_fail(err, err_len, "%s: type %u has no CUDA kernel", name, w->type);
    out->type = w->type, out->n_in = w->n_in, out->n_out = w->n_out, out->row_bytes = rb;
    if (!(out->data = dev_upload(g, w->data, rb * (size_t)w->n_out, 16, err, err_len))) return -1;
    g->weight_bytes += rb * (size_t)w->n_out;
    return 0;
}

static float *upload_vector(pvq_cuda_model *g, const float *v, int n, char *err, size_t err_len)
{
    return v ? dev_upload(g, v, (size_t)n * sizeof(float), 0, err, err_len) : NULL;
}

/* The FFN Hadamard transform's metadata (docs/rotation.md), checked by the plan. */
static int load_hadamard(pvq_cuda_model *g, const gguf_file *f, char *err, size_t err_len)
{
    int on = 0;
    if (gguf_get_bool(f, "pvq.rotation.ffn_hadamard", &on) || !on) return 0;
    uint32_t p;
    float scale;
    const gguf_kv *base = gguf_find_kv(f, "pvq.rotation.ffn_hadamard.base");
    if (gguf_get_u32(f, "pvq.rotation.ffn_hadamard.p", &p) || gguf_get_f32(f, "pvq.rotation.ffn_hadamard.scale", &scale) ||
        !base || base->type != GGUF_ARRAY || base->elem_type != GGUF_I8)
        return err_fail(err, err_len, "pvq.rotation.ffn_hadamard is set but its p, scale or base (int8 array) is missing");
    pvq_hadamard_plan hp;
    char msg[256];
    if (p > (1u << 30) || pvq_hadamard_plan_make(&hp, g->ffn_dim, (const int8_t *)base->data, base->n, (int)p, scale, msg,
                                                 sizeof msg))
        return err_fail(err, err_len, "%s", msg);
    if (hp.smem_bytes > 227 * 1024)
        return err_fail(err, err_len, "ffn_hadamard: n_ff = %d does not fit one block's shared memory", g->ffn_dim);
    if (!(g->hadamard_base = dev_upload(g, base->data, base->n, 0, err, err_len))) return -1;
    g->hadamard_h = hp.h, g->hadamard_p = hp.p, g->hadamard_scale = hp.scale;
    CK(k_hadamard_prepare(g->ffn_dim));
    return 0;
}

/* KV cache and scratch for n_ctx positions and batches of n_batch. */
static int alloc_state(pvq_cuda_model *g, int n_ctx, int n_batch, char *err, size_t err_len)
{
    size_t B = (size_t)n_batch, kv_dim = (size_t)g->n_head_kv * g->head_dim, kv = (size_t)g->n_layer * n_ctx * kv_dim;
    const int64_t n_in_max = g->ffn_dim > g->dim ? g->ffn_dim : g->dim;
    g->n_ctx = n_ctx, g->n_batch = n_batch;
    if (!(g->k_cache = dev_alloc(g, kv * 2, err, err_len)) || !(g->v_cache = dev_alloc(g, kv * 2, err, err_len)) ||
        !(g->x = dev_alloc(g, B * g->dim * 4, err, err_len)) || !(g->xb = dev_alloc(g, B * g->dim * 4, err, err_len)) ||
        !(g->xb2 = dev_alloc(g, B * g->dim * 4, err, err_len)) || !(g->q = dev_alloc(g, B * g->dim * 4, err, err_len)) ||
        !(g->k = dev_alloc(g, B * kv_dim * 4, err, err_len)) || !(g->v = dev_alloc(g, B * kv_dim * 4, err, err_len)) ||
        !(g->hb = dev_alloc(g, B * g->ffn_dim * 4, err, err_len)) ||
        !(g->hb2 = dev_alloc(g, B * g->ffn_dim * 4, err, err_len)) ||
        !(g->rope = dev_alloc(g, B * g->rope_dim * 4, err, err_len)) ||
        !(g->logits = dev_alloc(g, (size_t)g->n_vocab * 4, err, err_len)) ||
        !(g->tokens = dev_alloc(g, B * 4, err, err_len)) || !(g->n_past_dev = dev_alloc(g, sizeof(int), err, err_len)) ||
        !(g->q8 = dev_alloc(g, pvqk_q8_scratch_bytes(n_in_max), err, err_len)) ||
        !(g->q8_0 = dev_alloc(g, densek_q8_0_scratch_bytes(n_in_max, n_batch), err, err_len)) ||
        !(g->tile_scale = dev_alloc(g, B * 4, err, err_len)))
        return -1;
    if (!(g->host_rope = malloc(B * g->rope_dim * 4))) return err_fail(err, err_len, "out of memory");
    if (pvq_attention_smem_bytes(n_ctx, g->head_dim) > 227 * 1024)
        return err_fail(err, err_len, "a context of %d positions does not fit the attention kernel's shared memory", n_ctx);
    CK(k_attention_prepare(n_ctx, g->head_dim));
    return 0;
}

static pvq_cuda_model *model_new(char *err, size_t err_len)
{
    pvq_cuda_model *g = calloc(1, sizeof *g);
    if (!g) {
        err_fail(err, err_len, "out of memory");
        return NULL;
    }
    const char *graphs = getenv("PVQ_CUDA_GRAPHS");
    g->graph_off = (graphs && !strcmp(graphs, "0")) || pvqk_sync_mode();
    return g;
}

int pvq_cuda_model_load(const model *m, int n_ctx, int n_batch, pvq_cuda_model **out, char *err, size_t err_len)
{
    *out = NULL;
    if (n_ctx < 1 || n_batch < 1) return err_fail(err, err_len, "n_ctx and n_batch must be positive");
    pvq_cuda_model *g = model_new(err, err_len);
    if (!g) return -1;
    g->n_layer = m->n_layer, g->dim = m->dim, g->n_head = m->n_head, g->n_head_kv = m->n_head_kv;
    g->head_dim = m->head_dim, g->ffn_dim = m->ffn_dim, g->n_vocab = m->n_vocab, g->rope_dim = m->rope_dim;
    g->rope_neox = m->arch->rope_neox, g->rms_eps = m->rms_eps, g->rope_base = m->rope_base;
    int kv_dim = m->n_head_kv * m->head_dim;
    if (!(g->layers = calloc((size_t)m->n_layer, sizeof *g->layers))) {
        err_fail(err, err_len, "out of memory");
        goto bad;
    }
    if (upload_weight(g, m, "token_embd.weight", &m->tok_embd, &g->tok_embd, err, err_len)) goto bad;
    if (m->output.data == m->tok_embd.data)
        g->output = g->tok_embd;
    else if (upload_weight(g, m, "output.weight", &m->output, &g->output, err, err_len))
        goto bad;
    if (!(g->out_norm = upload_vector(g, m->out_norm, m->dim, err, err_len))) goto bad;
    if (m->output_mix.data && upload_weight(g, m, "output_mix.weight", &m->output_mix, &g->output_mix, err, err_len))
        goto bad;
    for (int l = 0; l < m->n_layer; l++) {
        const layer *L = &m->layers[l];
        cuda_layer *C = &g->layers[l];
        const weight *w[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        cuda_weight *c[7] = {&C->wq, &C->wk, &C->wv, &C->wo, &C->w_gate, &C->w_up, &C->w_down};
        const char *suffix[7] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
        for (int i = 0; i < 7; i++) {
            char name[64];
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, suffix[i]);
            if (upload_weight(g, m, name, w[i], c[i], err, err_len)) goto bad;
        }
        if (!(C->attn_norm = upload_vector(g, L->attn_norm, m->dim, err, err_len)) ||
            !(C->ffn_norm = upload_vector(g, L->ffn_norm, m->dim, err, err_len)))
            goto bad;
        if ((L->bq && !(C->bq = upload_vector(g, L->bq, m->dim, err, err_len))) ||
            (L->bk && !(C->bk = upload_vector(g, L->bk, kv_dim, err, err_len))) ||
            (L->bv && !(C->bv = upload_vector(g, L->bv, kv_dim, err, err_len))))
            goto bad;
    }
    if (load_hadamard(g, &m->file, err, err_len) || alloc_state(g, n_ctx, n_batch, err, err_len)) goto bad;
    *out = g;
    return 0;
bad:
    pvq_cuda_model_free(g);
    return -1;
}

/* A random PVQ matrix of a layout: valid fields, row scales around 1 / sqrt(groups), levels (i+1)/2^b. */
static int random_pvq(pvq_cuda_model *g, uint32_t type, int64_t n_in, int64_t n_out, uint64_t seed, cuda_weight *out,
                      char *err, size_t err_len)
{
    int D, K, b;
    char msg[256];
    if (pvq_type_params(type, &D, &K, &b, msg, sizeof msg)) return err_fail(err, err_len, "%s", msg);
    float levels[1 << PVQ_MAX_GAIN_BITS];
    for (int i = 0; i < (1 << b); i++) levels[i] = (float)(i + 1) / (float)(1 << b);
    pvq_codec c;
    if (pvq_codec_init(&c, type, levels, (size_t)1 << b, msg, sizeof msg)) return err_fail(err, err_len, "%s", msg);
    size_t rb = pvq_row_bytes(&c, n_in);
    const cuda_layout *L = layout_for(g, &c, type, err, err_len);
    const float *dev_levels = dev_upload(g, levels, ((size_t)1 << b) * sizeof(float), 0, err, err_len);
    float *scales = dev_alloc(g, (size_t)n_out * sizeof(float), err, err_len);
    uint8_t *data = dev_alloc(g, rb * (size_t)n_out + 16, err, err_len);
    if (rb == 0) err_fail(err, err_len, "random PVQ matrix: n_in %lld is not a multiple of the block", (long long)n_in);
    const int block_groups = c.block_groups;
    const uint64_t n_points = c.n_points;
    pvq_codec_free(&c);
    if (!L || !dev_levels || !scales || !data || rb == 0) return -1;
    float s = 1.0f / sqrtf((float)(n_in / D));
    out->tables = pvq_cuda_tables_bind(&L->tab, L->dev, dev_levels);
    CK(pvqk_fill_random(data, n_out, rb, &out->tables, block_groups, n_points, seed));
    CK(cudaMemset(data + rb * (size_t)n_out, 0, 16));
    CK(k_fill_uniform_f32(scales, (size_t)n_out, 0.5f * s, 1.5f * s, seed + 1));
    out->type = type, out->pvq = 1, out->n_in = n_in, out->n_out = n_out, out->row_bytes = rb;
    out->data = data, out->row_scales = scales;
    CK(pvqk_prepare(out));
    g->weight_bytes += rb * (size_t)n_out + (size_t)n_out * 2;
    return 0;
}

static float *ones(pvq_cuda_model *g, int n, char *err, size_t err_len)
{
    float *v = dev_alloc(g, (size_t)n * sizeof(float), err, err_len);
    if (v && k_fill_uniform_f32(v, (size_t)n, 1.0f, 1.0f, 0) != cudaSuccess) {
        err_fail(err, err_len, "CUDA: fill failed");
        return NULL;
    }
    return v;
}

int pvq_cuda_model_random(const pvq_cuda_random_shape *s, int n_ctx, int n_batch, uint64_t seed,
                          pvq_cuda_model **out, char *err, size_t err_len)
{
    *out = NULL;
    pvq_cuda_model *g = model_new(err, err_len);
    if (!g) return -1;
    g->n_layer = s->n_layer, g->dim = s->dim, g->n_head = s->n_head, g->n_head_kv = s->n_head_kv;
    g->head_dim = s->dim / s->n_head, g->ffn_dim = s->ffn_dim, g->n_vocab = s->n_vocab, g->rope_dim = g->head_dim;
    g->rms_eps = 1e-5f, g->rope_base = 10000.0f;
    int kv_dim = g->n_head_kv * g->head_dim;
    if (!(g->layers = calloc((size_t)s->n_layer, sizeof *g->layers))) {
        err_fail(err, err_len, "out of memory");
        goto bad;
    }
    uint16_t *emb = dev_alloc(g, (size_t)s->n_vocab * s->dim * 2 + 16, err, err_len);
    if (!emb || k_fill_uniform_f16(emb, (size_t)s->n_vocab * s->dim, -0.05f, 0.05f, seed) != cudaSuccess) goto bad;
    g->tok_embd = (cuda_weight){.type = T_F16, .n_in = s->dim, .n_out = s->n_vocab, .row_bytes = (size_t)s->dim * 2,
                                .data = (const uint8_t *)emb};
    if (random_pvq(g, s->pvq_type, s->dim, s->n_vocab, seed + 2, &g->output, err, err_len) ||
        !(g->out_norm = ones(g, s->dim, err, err_len)))
        goto bad;
    for (int l = 0; l < s->n_layer; l++) {
        cuda_layer *C = &g->layers[l];
        uint64_t sl = seed + 100 * (uint64_t)(l + 1);
        if (random_pvq(g, s->pvq_type, s->dim, s->dim, sl + 1, &C->wq, err, err_len) ||
            random_pvq(g, s->pvq_type, s->dim, kv_dim, sl + 2, &C->wk, err, err_len) ||
            random_pvq(g, s->pvq_type, s->dim, kv_dim, sl + 3, &C->wv, err, err_len) ||
            random_pvq(g, s->pvq_type, s->dim, s->dim, sl + 4, &C->wo, err, err_len) ||
            random_pvq(g, s->pvq_type, s->dim, s->ffn_dim, sl + 5, &C->w_gate, err, err_len) ||
            random_pvq(g, s->pvq_type, s->dim, s->ffn_dim, sl + 6, &C->w_up, err, err_len) ||
            random_pvq(g, s->pvq_type, s->ffn_dim, s->dim, sl + 7, &C->w_down, err, err_len) ||
            !(C->attn_norm = ones(g, s->dim, err, err_len)) || !(C->ffn_norm = ones(g, s->dim, err, err_len)))
            goto bad;
    }
    if (s->hadamard_h) {
        const int h = s->hadamard_h, p = s->hadamard_p;
        if ((int64_t)h * p != s->ffn_dim) {
            err_fail(err, err_len, "random model: hadamard %d x %d is not n_ff %d", h, p, s->ffn_dim);
            goto bad;
        }
        int8_t *base = malloc((size_t)h * h);
        if (!base) {
            err_fail(err, err_len, "out of memory");
            goto bad;
        }
        for (size_t i = 0; i < (size_t)h * h; i++) base[i] = (int8_t)(((i * 2654435761u) >> 7) & 1 ? 1 : -1);
        g->hadamard_base = dev_upload(g, base, (size_t)h * h, 0, err, err_len);
        free(base);
        if (!g->hadamard_base) goto bad;
        g->hadamard_h = h, g->hadamard_p = p, g->hadamard_scale = 1.0f / sqrtf((float)h * (float)p);
        if (k_hadamard_prepare(s->ffn_dim) != cudaSuccess) {
            err_fail(err, err_len, "CUDA: n_ff %d does not fit the Hadamard kernel's shared memory", s->ffn_dim);
            goto bad;
        }
    }
    if (alloc_state(g, n_ctx, n_batch, err, err_len)) goto bad;
    *out = g;
    return 0;
bad:
    pvq_cuda_model_free(g);
    return -1;
}

void pvq_cuda_model_free(pvq_cuda_model *g)
{
    if (!g) return;
    if (g->decode_graph) cudaGraphExecDestroy(g->decode_graph);
    for (size_t i = 0; i < g->n_allocs; i++) cudaFree(g->allocs[i]);
    for (int i = 0; i < g->n_layouts; i++) pvq_cuda_tables_free(&g->layouts[i].tab);
    free(g->allocs);
    free(g->layers);
    free(g->host_rope);
    free(g);
}

int pvq_cuda_n_past(const pvq_cuda_model *g) { return g->n_past; }
void pvq_cuda_truncate(pvq_cuda_model *g, int n_keep)
{
    if (n_keep >= 0 && n_keep < g->n_past) g->n_past = n_keep;
}
int pvq_cuda_uses_graph(const pvq_cuda_model *g) { return g->decode_graph != NULL; }
void pvq_cuda_set_f32_activations(pvq_cuda_model *g, int on)
{
    if (g->decode_graph && g->f32_act != !!on) {   /* the captured step holds the other GEMV path */
        cudaGraphExecDestroy(g->decode_graph);
        g->decode_graph = NULL;
    }
    g->f32_act = !!on;
}

const cuda_weight *pvq_cuda_model_weight(const pvq_cuda_model *g, int layer, int which)
{
    const cuda_layer *L = &g->layers[layer];
    const cuda_weight *w[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
    return which < 0 ? &g->output : w[which];
}
size_t pvq_cuda_weight_bytes(const pvq_cuda_model *g) { return g->weight_bytes; }

/* Tensor cores for PVQ prefill when the tile plan applies, else one GEMV per token; in the float32
 * activation mode the GEMV's float path for every T. */
static cudaError_t matmul(const pvq_cuda_model *g, const cuda_weight *w, const float *x, int T, float *y)
{
    if (!w->pvq) return densek_gemv(w, x, T, y, g->q8_0);
    if (g->f32_act) return pvqk_gemv(w, x, T, y, 1, g->q8);
    if (pvq_mma_plan_make(w->tables.D, w->n_in, w->n_out, T).usable) return pvqk_matmul_mma(w, x, T, y, g->tile_scale);
    return pvqk_gemv(w, x, T, y, 0, g->q8);
}

/* cos/sin of pos * base^(-2i/rope_dim) with theta stepped as model.c's rope_table steps it, on the host
 * with the same libm calls, so both paths rotate by the same floats. */
static void rope_table(float *cs, int pos, int rope_dim, float base)
{
    float theta = (float)pos, step = powf(base, -2.0f / (float)rope_dim);
    for (int i = 0; i < rope_dim / 2; i++) {
        cs[2 * i] = cosf(theta);
        cs[2 * i + 1] = sinf(theta);
        theta *= step;
    }
}

/* Every launch of a forward pass of T tokens, from the embedding rows to the last token's logits, on
 * the (per-thread) default stream.  Reads the tokens, the rope table and n_past from device memory. */
static int enqueue(pvq_cuda_model *g, int T, char *err, size_t err_len)
{
    const int dim = g->dim, hd = g->head_dim, kv_dim = g->n_head_kv * hd, ffn = g->ffn_dim;
    CK(g->tok_embd.pvq ? pvqk_dequantize_rows(&g->tok_embd, g->tokens, T, g->x) : densek_rows(&g->tok_embd, g->tokens, T, g->x));
    for (int l = 0; l < g->n_layer; l++) {
        const cuda_layer *L = &g->layers[l];
        uint16_t *kc = g->k_cache + (size_t)l * g->n_ctx * kv_dim, *vc = g->v_cache + (size_t)l * g->n_ctx * kv_dim;
        CK(k_rmsnorm(g->x, L->attn_norm, T, dim, g->rms_eps, g->xb));
        CK(matmul(g, &L->wq, g->xb, T, g->q));
        CK(matmul(g, &L->wk, g->xb, T, g->k));
        CK(matmul(g, &L->wv, g->xb, T, g->v));
        if (L->bq) CK(k_add_bias(g->q, L->bq, T, dim));
        if (L->bk) CK(k_add_bias(g->k, L->bk, T, kv_dim));
        if (L->bv) CK(k_add_bias(g->v, L->bv, T, kv_dim));
        CK(k_rope(g->q, g->rope, T, g->n_head, hd, g->rope_dim, g->rope_neox));
        CK(k_rope(g->k, g->rope, T, g->n_head_kv, hd, g->rope_dim, g->rope_neox));
        CK(k_kv_store(g->k, g->v, T, kv_dim, g->n_past_dev, kc, vc));
        CK(k_attention(g->q, kc, vc, T, g->n_past_dev, g->n_head, g->n_head_kv, hd, g->n_ctx, g->xb));
        CK(matmul(g, &L->wo, g->xb, T, g->xb2));
        CK(k_add(g->x, g->xb2, (size_t)T * dim));
        CK(k_rmsnorm(g->x, L->ffn_norm, T, dim, g->rms_eps, g->xb));
        CK(matmul(g, &L->w_gate, g->xb, T, g->hb));
        CK(matmul(g, &L->w_up, g->xb, T, g->hb2));
        CK(k_swiglu(g->hb, g->hb2, (size_t)T * ffn));
        const float *down_in = g->hb;
        if (g->hadamard_h) {
            CK(k_hadamard(g->hb, g->hb2, T, g->hadamard_h, g->hadamard_p, g->hadamard_scale, g->hadamard_base));
            down_in = g->hb2;
        }
        CK(matmul(g, &L->w_down, down_in, T, g->xb));
        CK(k_add(g->x, g->xb, (size_t)T * dim));
    }
    CK(k_rmsnorm(g->x + (size_t)(T - 1) * dim, g->out_norm, 1, dim, g->rms_eps, g->xb));
    const float *head_in = g->xb;
    if (g->output_mix.data) {
        CK(matmul(g, &g->output_mix, g->xb, 1, g->xb2));
        head_in = g->xb2;
    }
    CK(matmul(g, &g->output, head_in, 1, g->logits));
    return 0;
}

/* One decode step (T = 1) as a CUDA graph: some 500 launches for a 7B model cost more host time than
 * the GPU needs for them, a graph launch costs one.  Captured at the first step and replayed at every
 * later one (positions, token and rope table are device memory).  Returns 1 when the graph ran, 0 when
 * graphs are off or the capture failed (the caller then launches directly), -1 on an error. */
static int run_decode_graph(pvq_cuda_model *g, char *err, size_t err_len)
{
    if (g->graph_off) return 0;
    if (!g->decode_graph) {
        cudaGraph_t graph = NULL;
        char msg[256];
        if (cudaStreamBeginCapture(cudaStreamPerThread, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
            cudaGetLastError();
            g->graph_off = 1;
            return 0;
        }
        int rc = enqueue(g, 1, msg, sizeof msg);
        cudaError_t e = cudaStreamEndCapture(cudaStreamPerThread, &graph);
        if (rc || e != cudaSuccess || cudaGraphInstantiate(&g->decode_graph, graph, 0) != cudaSuccess) {
            g->decode_graph = NULL;
            g->graph_off = 1;
        }
        if (graph) cudaGraphDestroy(graph);
        cudaGetLastError();
        if (g->graph_off) return 0;
    }
    CK(cudaGraphLaunch(g->decode_graph, cudaStreamPerThread));
    return 1;
}

int pvq_cuda_forward(pvq_cuda_model *g, const int32_t *tokens, int T, float *logits, char *err, size_t err_len)
{
    if (T < 1 || T > g->n_batch) return err_fail(err, err_len, "%d tokens in a batch of at most %d", T, g->n_batch);
    if (g->n_past + T > g->n_ctx)
        return err_fail(err, err_len, "context full: %d cached + %d new > %d", g->n_past, T, g->n_ctx);
    for (int t = 0; t < T; t++)
        if (tokens[t] < 0 || tokens[t] >= g->n_vocab)
            return err_fail(err, err_len, "token id %d is outside the vocabulary (%d)", tokens[t], g->n_vocab);
    for (int t = 0; t < T; t++) rope_table(g->host_rope + (size_t)t * g->rope_dim, g->n_past + t, g->rope_dim, g->rope_base);
    CK(cudaMemcpy(g->rope, g->host_rope, (size_t)T * g->rope_dim * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(g->tokens, tokens, (size_t)T * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(g->n_past_dev, &g->n_past, sizeof(int), cudaMemcpyHostToDevice));
    int ran = T == 1 ? run_decode_graph(g, err, err_len) : 0;
    if (ran < 0 || (!ran && enqueue(g, T, err, err_len))) return -1;
    if (logits) CK(cudaMemcpy(logits, g->logits, (size_t)g->n_vocab * 4, cudaMemcpyDeviceToHost));
    CK(cudaDeviceSynchronize());
    g->n_past += T;
    return 0;
}
