/* Llama / Qwen2 forward pass, written to read like llama2.c's run.c, with the numerics of llama.cpp's
 * CPU backend where they matter for matching its logits: activations meet weights in the weight's
 * vec_type (F16 or Q8_0), the KV cache is fp16, attention probabilities are rounded to fp16 before
 * they weight V, RMSNorm sums squares in double. */
#include "errmsg.h"
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


/* ---------------------------------------------------------------- loading */

/* llama.cpp's names of a block's tensors (both architectures use them) */
static const char *const LLAMA_BLOCK_TENSORS[BLOCK_TENSORS] = {
    [BLOCK_ATTN_NORM] = "attn_norm.weight", [BLOCK_FFN_NORM] = "ffn_norm.weight", [BLOCK_BQ] = "attn_q.bias",
    [BLOCK_BK] = "attn_k.bias", [BLOCK_BV] = "attn_v.bias", [BLOCK_WQ] = "attn_q.weight",
    [BLOCK_WK] = "attn_k.weight", [BLOCK_WV] = "attn_v.weight", [BLOCK_WO] = "attn_output.weight",
    [BLOCK_GATE] = "ffn_gate.weight", [BLOCK_UP] = "ffn_up.weight", [BLOCK_DOWN] = "ffn_down.weight",
};

static const arch_traits ARCHES[] = {
    {.name = "llama", .rope_neox = 0, .qkv_bias = 0, .block_tensors = LLAMA_BLOCK_TENSORS},
    {.name = "qwen2", .rope_neox = 1, .qkv_bias = 1, .block_tensors = LLAMA_BLOCK_TENSORS},
};
#define N_ARCHES (sizeof ARCHES / sizeof ARCHES[0])

static int get_weight(model *m, weight *w, const char *name, int64_t n_in, int64_t n_out, char *err,
                      size_t err_len) {
    const gguf_tensor *t = gguf_find_tensor(&m->file, name);
    if (!t) return err_fail(err, err_len, "missing tensor %s", name);
    if (t->n_dims != 2 || t->ne[0] != n_in || t->ne[1] != n_out)
        return err_fail(err, err_len, "tensor %s has shape [%lld, %lld], expected [%lld, %lld]", name,
                    (long long)t->ne[0], (long long)t->ne[1], (long long)n_in, (long long)n_out);
    w->data = t->data;
    w->type = t->type;
    w->n_in = n_in;
    w->n_out = n_out;
    w->row_bytes = type_row_bytes(t->type, n_in);
    memset(&w->pvq, 0, sizeof w->pvq);
    if (type_is_pvq(t->type))
        return pvq_weight_load(&w->pvq, &m->pvq_layouts, &m->file, t, m->pvq_mode, err, err_len);
    return 0;
}

/* A vector (norm gain, bias) as an owned f32 copy. */
static int get_vector(const model *m, float **out, const char *name, int64_t n, int optional, char *err,
                      size_t err_len) {
    const gguf_tensor *t = gguf_find_tensor(&m->file, name);
    *out = NULL;
    if (!t) return optional ? 0 : err_fail(err, err_len, "missing tensor %s", name);
    if (!type_get(t->type)->to_float[ISA_SCALAR])
        return err_fail(err, err_len, "tensor %s is %s: vectors must be a float type", name, type_get(t->type)->name);
    if (t->ne[0] != n || t->ne[1] * t->ne[2] * t->ne[3] != 1)
        return err_fail(err, err_len, "tensor %s has %lld elements, expected %lld", name, (long long)t->ne[0],
                    (long long)n);
    if (!(*out = malloc((size_t)n * sizeof(float)))) return err_fail(err, err_len, "out of memory");
    type_get(t->type)->to_float[isa_active()](t->data, *out, n);
    return 0;
}

static int get_hparam(const gguf_file *f, const char *arch, const char *key, uint32_t *out, uint32_t lo,
                      uint32_t hi, char *err, size_t err_len) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    if (gguf_get_u32(f, full, out)) return err_fail(err, err_len, "missing or non-integer metadata %s", full);
    if (*out < lo || *out > hi) return err_fail(err, err_len, "%s = %u is out of range [%u, %u]", full, *out, lo, hi);
    return 0;
}

/* The online transform of pvq.rotation.ffn_hadamard (docs/rotation.md), when the file asks for it. */
static int load_ffn_hadamard(model *m, char *err, size_t err_len) {
    int on = 0;
    if (gguf_get_bool(&m->file, "pvq.rotation.ffn_hadamard", &on) || !on) return 0;
    uint32_t p;
    float scale;
    const gguf_kv *base = gguf_find_kv(&m->file, "pvq.rotation.ffn_hadamard.base");
    if (gguf_get_u32(&m->file, "pvq.rotation.ffn_hadamard.p", &p) ||
        gguf_get_f32(&m->file, "pvq.rotation.ffn_hadamard.scale", &scale) || !base || base->type != GGUF_ARRAY ||
        base->elem_type != GGUF_I8)
        return err_fail(err, err_len, "pvq.rotation.ffn_hadamard is set but its p (uint32), base (int8 array) or "
                                      "scale (float32) is missing or mistyped");
    return hadamard_plan_init(&m->ffn_hadamard, m->ffn_dim, p, (const int8_t *)base->data, base->n, scale, err,
                              err_len);
}

int model_load(model *m, const char *path, pvq_mode pvq_mode, char *err, size_t err_len) {
    memset(m, 0, sizeof *m);
    m->pvq_mode = pvq_mode;
    if (gguf_open(&m->file, path, err, err_len)) return -1;
    gguf_str a;
    char arch[32] = "";
    if (gguf_get_str(&m->file, "general.architecture", &a)) {
        err_fail(err, err_len, "%s: no general.architecture", path);
        goto bad;
    }
    snprintf(arch, sizeof arch, "%.*s", (int)(a.len < 31 ? a.len : 31), a.ptr);
    for (size_t i = 0; i < N_ARCHES; i++)
        if (!strcmp(arch, ARCHES[i].name) && a.len == strlen(ARCHES[i].name)) m->arch = &ARCHES[i];
    if (!m->arch) {
        char names[128] = "";
        for (size_t i = 0; i < N_ARCHES; i++)
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "", ARCHES[i].name);
        err_fail(err, err_len, "unsupported architecture '%.*s' (supported: %s)", (int)(a.len < 64 ? a.len : 64),
                 a.ptr, names);
        goto bad;
    }
    uint32_t n_layer, dim, n_head, n_head_kv, ffn, ctx, rope_dim;
    if (get_hparam(&m->file, arch, "block_count", &n_layer, 1, 4096, err, err_len) ||
        get_hparam(&m->file, arch, "embedding_length", &dim, 1, 1 << 16, err, err_len) ||
        get_hparam(&m->file, arch, "attention.head_count", &n_head, 1, 1024, err, err_len) ||
        get_hparam(&m->file, arch, "feed_forward_length", &ffn, 1, 1 << 20, err, err_len) ||
        get_hparam(&m->file, arch, "context_length", &ctx, 1, 1 << 24, err, err_len))
        goto bad;
    char key[128];
    snprintf(key, sizeof key, "%s.attention.head_count_kv", arch);
    if (gguf_get_u32(&m->file, key, &n_head_kv)) n_head_kv = n_head;
    if (n_head_kv == 0 || n_head % n_head_kv || dim % n_head || (dim / n_head) % 2) {
        err_fail(err, err_len, "inconsistent heads: dim %u, %u heads, %u KV heads", dim, n_head, n_head_kv);
        goto bad;
    }
    m->n_layer = (int)n_layer, m->dim = (int)dim, m->n_head = (int)n_head, m->n_head_kv = (int)n_head_kv;
    m->ffn_dim = (int)ffn, m->n_ctx_train = (int)ctx, m->head_dim = (int)(dim / n_head);
    snprintf(key, sizeof key, "%s.rope.dimension_count", arch);
    if (gguf_get_u32(&m->file, key, &rope_dim)) rope_dim = (uint32_t)m->head_dim;
    if (rope_dim == 0 || rope_dim > (uint32_t)m->head_dim || rope_dim % 2) {
        err_fail(err, err_len, "%s = %u does not fit head size %d", key, rope_dim, m->head_dim);
        goto bad;
    }
    m->rope_dim = (int)rope_dim;
    snprintf(key, sizeof key, "%s.rope.freq_base", arch);
    if (gguf_get_f32(&m->file, key, &m->rope_base)) m->rope_base = 10000.0f;
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", arch);
    if (gguf_get_f32(&m->file, key, &m->rms_eps)) {
        err_fail(err, err_len, "missing metadata %s", key);
        goto bad;
    }
    if (!(m->rope_base > 0.0f) || !(m->rms_eps >= 0.0f) || !isfinite(m->rope_base) || !isfinite(m->rms_eps)) {
        err_fail(err, err_len, "bad rope.freq_base %g or rms epsilon %g", m->rope_base, m->rms_eps);
        goto bad;
    }

    const gguf_tensor *emb = gguf_find_tensor(&m->file, "token_embd.weight");
    if (!emb || emb->n_dims != 2 || emb->ne[0] != dim || emb->ne[1] > (1 << 24)) {
        err_fail(err, err_len, "missing or malformed token_embd.weight");
        goto bad;
    }
    m->n_vocab = (int)emb->ne[1];
    if (get_weight(m, &m->tok_embd, "token_embd.weight", dim, m->n_vocab, err, err_len)) goto bad;
    if (load_ffn_hadamard(m, err, err_len)) goto bad;
    if (gguf_find_tensor(&m->file, "output.weight")) {
        if (get_weight(m, &m->output, "output.weight", dim, m->n_vocab, err, err_len)) goto bad;
    } else {
        m->output = m->tok_embd;
    }
    if (get_vector(m, &m->out_norm, "output_norm.weight", dim, 0, err, err_len)) goto bad;
    if (gguf_find_tensor(&m->file, "output_mix.weight") &&
        get_weight(m, &m->output_mix, "output_mix.weight", dim, dim, err, err_len))
        goto bad;

    if (!(m->layers = calloc(n_layer, sizeof *m->layers))) {
        err_fail(err, err_len, "out of memory");
        goto bad;
    }
    int kv_dim = m->n_head_kv * m->head_dim;
    for (int l = 0; l < m->n_layer; l++) {
        layer *L = &m->layers[l];
        char n[BLOCK_TENSORS][64];
        for (int i = 0; i < BLOCK_TENSORS; i++) snprintf(n[i], sizeof n[i], "blk.%d.%s", l, m->arch->block_tensors[i]);
        int bias_optional = !m->arch->qkv_bias;
        if (get_vector(m, &L->attn_norm, n[BLOCK_ATTN_NORM], dim, 0, err, err_len) ||
            get_vector(m, &L->ffn_norm, n[BLOCK_FFN_NORM], dim, 0, err, err_len) ||
            get_vector(m, &L->bq, n[BLOCK_BQ], dim, bias_optional, err, err_len) ||
            get_vector(m, &L->bk, n[BLOCK_BK], kv_dim, bias_optional, err, err_len) ||
            get_vector(m, &L->bv, n[BLOCK_BV], kv_dim, bias_optional, err, err_len) ||
            get_weight(m, &L->wq, n[BLOCK_WQ], dim, dim, err, err_len) ||
            get_weight(m, &L->wk, n[BLOCK_WK], dim, kv_dim, err, err_len) ||
            get_weight(m, &L->wv, n[BLOCK_WV], dim, kv_dim, err, err_len) ||
            get_weight(m, &L->wo, n[BLOCK_WO], dim, dim, err, err_len) ||
            get_weight(m, &L->w_gate, n[BLOCK_GATE], dim, ffn, err, err_len) ||
            get_weight(m, &L->w_up, n[BLOCK_UP], dim, ffn, err, err_len) ||
            get_weight(m, &L->w_down, n[BLOCK_DOWN], ffn, dim, err, err_len))
            goto bad;
    }
    return 0;
bad:
    model_free(m);
    return -1;
}

void model_free(model *m) {
    if (m->layers)
        for (int l = 0; l < m->n_layer; l++) {
            layer *L = &m->layers[l];
            free(L->attn_norm), free(L->ffn_norm), free(L->bq), free(L->bk), free(L->bv);
            weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
            for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) pvq_weight_free(&ws[i]->pvq);
        }
    if (m->output.data != m->tok_embd.data) pvq_weight_free(&m->output.pvq);
    pvq_weight_free(&m->output_mix.pvq);
    pvq_weight_free(&m->tok_embd.pvq);
    free(m->layers);
    free(m->out_norm);
    pvq_layouts_free(&m->pvq_layouts);
    hadamard_plan_free(&m->ffn_hadamard);
    gguf_close(&m->file);
    memset(m, 0, sizeof *m);
}

/* ---------------------------------------------------------------- state */

int state_new(state *s, const model *m, int n_ctx, int n_batch, int n_threads, int logits_all, char *err,
              size_t err_len) {
    memset(s, 0, sizeof *s);
    s->n_ctx = n_ctx, s->n_batch = n_batch, s->logits_all = logits_all;
    size_t B = (size_t)n_batch, kv_dim = (size_t)m->n_head_kv * m->head_dim;
    size_t wide = (size_t)(m->ffn_dim > m->dim ? m->ffn_dim : m->dim);
    size_t kv = (size_t)m->n_layer * n_ctx * kv_dim;
    s->k_cache = malloc(kv * 2);
    s->v_cache = malloc(kv * 2);
    s->x = malloc(B * m->dim * 4), s->xb = malloc(B * m->dim * 4), s->xb2 = malloc(B * m->dim * 4);
    s->q = malloc(B * m->dim * 4), s->k = malloc(B * kv_dim * 4), s->v = malloc(B * kv_dim * 4);
    s->hb = malloc(B * m->ffn_dim * 4), s->hb2 = malloc(B * m->ffn_dim * 4);
    s->rope = malloc(B * m->rope_dim * 4);
    s->xq = malloc(B * type_max_xq_bytes((int64_t)wide));
    s->att = malloc((size_t)n_threads * n_ctx * 4);
    s->att16 = malloc((size_t)n_threads * (n_ctx + m->head_dim) * 2);
    s->lanes = malloc((size_t)n_threads * 64 * m->head_dim * 4);
    s->logits = malloc((logits_all ? B : 1) * m->n_vocab * 4);
    s->scratch_bytes = type_max_scratch_bytes((int64_t)wide);
    s->scratch = malloc((size_t)n_threads * s->scratch_bytes);
    s->pool = pool_new(n_threads);
    if (!s->k_cache || !s->v_cache || !s->x || !s->xb || !s->xb2 || !s->q || !s->k || !s->v || !s->hb ||
        !s->hb2 || !s->rope || !s->xq || !s->att || !s->att16 || !s->lanes || !s->logits || !s->scratch ||
        !s->pool) {
        state_free(s);
        return err_fail(err, err_len, "out of memory for a context of %d tokens", n_ctx);
    }
    return 0;
}

void state_free(state *s) {
    if (s->pool) pool_free(s->pool);
    free(s->k_cache), free(s->v_cache), free(s->x), free(s->xb), free(s->xb2), free(s->q), free(s->k);
    free(s->v), free(s->hb), free(s->hb2), free(s->rope), free(s->xq), free(s->att), free(s->att16), free(s->lanes);
    free(s->logits), free(s->scratch);
    memset(s, 0, sizeof *s);
}

/* ---------------------------------------------------------------- matmul */

/* Up to three weights that read the same input (q/k/v, gate/up) run as one task. */
typedef struct {
    int nw, T;
    const weight *w[3];     /* of one type */
    const type_traits *tt;  /* theirs */
    float *out[3];
    const float *x;  /* [T][n_in] */
    void *xq;        /* x as tt->quantize_x writes it, xq_row bytes per token */
    size_t xq_row;
    uint8_t *scratch; /* scratch_bytes per thread */
    size_t scratch_bytes;
} matmul_task;

static void convert_task(void *arg, int ith, int nth) {
    matmul_task *mt = arg;
    for (int t = ith; t < mt->T; t += nth)
        mt->tt->quantize_x(mt->w[0], mt->x + (int64_t)t * mt->w[0]->n_in, (uint8_t *)mt->xq + t * mt->xq_row);
}

/* A share of the rows of all the weights per thread, in whole multiples of batch_rows for batches. */
static void matmul_task_rows(void *arg, int ith, int nth) {
    matmul_task *mt = arg;
    int64_t total = 0, align = mt->T > 1 ? mt->tt->batch_rows : 1;
    for (int i = 0; i < mt->nw; i++) total += mt->w[i]->n_out;
    int64_t per = ((total + nth - 1) / nth + align - 1) / align * align;
    int64_t r0 = per * ith, r1 = r0 + per < total ? r0 + per : total, base = 0;
    for (int i = 0; i < mt->nw; base += mt->w[i++]->n_out) {
        const weight *w = mt->w[i];
        int64_t lo = (r0 > base ? r0 : base) - base, hi = (r1 < base + w->n_out ? r1 : base + w->n_out) - base;
        if (lo < hi)
            mt->tt->rows(w, lo, hi, mt->T, mt->x, mt->xq, mt->xq_row, mt->out[i], w->n_out,
                         mt->scratch + (size_t)ith * mt->scratch_bytes);
    }
}

/* out_i[T][n_out_i] = x[T][n_in] . w_i^T for the given weights (same n_in). */
static void matmul(state *s, const float *x, int T, int nw, const weight *w0, float *o0, const weight *w1,
                   float *o1, const weight *w2, float *o2) {
    const weight *w[3] = {w0, w1, w2};
    float *o[3] = {o0, o1, o2};
    for (int i = 1; i < nw; i++)
        if (w[i]->type != w0->type) { /* one task reads x in one type: mixed files run weight by weight */
            for (int j = 0; j < nw; j++) matmul(s, x, T, 1, w[j], o[j], NULL, NULL, NULL, NULL);
            return;
        }
    const type_traits *tt = type_get(w0->type);
    matmul_task mt = {nw, T, {w0, w1, w2}, tt, {o0, o1, o2}, x, s->xq, tt->xq_bytes(w0->type, w0->n_in),
                      s->scratch, s->scratch_bytes};
    if (T == 1)
        convert_task(&mt, 0, 1);
    else
        pool_run(s->pool, convert_task, &mt);
    pool_run(s->pool, matmul_task_rows, &mt);
}

/* ---------------------------------------------------------------- the layers */

static void rmsnorm(float *out, const float *x, const float *g, int n, float eps) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)(x[i] * x[i]);
    float scale = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) out[i] = x[i] * scale * g[i];
}

/* cos/sin of pos * base^(-2i/rope_dim), with theta stepped as ggml steps it. */
static void rope_table(float *cs, int pos, int rope_dim, float base) {
    float theta = (float)pos, step = powf(base, -2.0f / (float)rope_dim);
    for (int i = 0; i < rope_dim / 2; i++) {
        cs[2 * i] = cosf(theta);
        cs[2 * i + 1] = sinf(theta);
        theta *= step;
    }
}

/* The rotation as llama.cpp's build computes it: its compiler fuses the first product of each sum
 * (x0 cos, x0 sin) into one fused multiply-add. */
static void rope(float *v, const float *cs, int rope_dim, int neox) {
    int half = rope_dim / 2;
    for (int i = 0; i < half; i++) {
        int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
        float x0 = v[a], x1 = v[b], c = cs[2 * i], s = cs[2 * i + 1];
        v[a] = fmaf(x0, c, -(x1 * s));
        v[b] = fmaf(x0, s, x1 * c);
    }
}

typedef struct {
    const model *m;
    state *s;
    int layer, T;
} attn_task;

static void to_f16(const float *x, uint16_t *y, int n) { type_get(T_F16)->from_float[isa_active()](x, y, n); }

/* One (token, head) pair per step: causal softmax(q.K / sqrt(hd)) . V over the cache. */
static void attention(void *arg, int ith, int nth) {
    attn_task *at = arg;
    const model *m = at->m;
    state *s = at->s;
    int hd = m->head_dim, kv_dim = m->n_head_kv * hd, group = m->n_head / m->n_head_kv;
    float *att = s->att + (size_t)ith * s->n_ctx, scale = 1.0f / sqrtf((float)hd);
    uint16_t *p16 = s->att16 + (size_t)ith * (s->n_ctx + hd), *q16 = p16 + s->n_ctx;
    float *lanes = s->lanes + (size_t)ith * 64 * hd;
    const uint16_t *kc = s->k_cache + (size_t)at->layer * s->n_ctx * kv_dim;
    const uint16_t *vc = s->v_cache + (size_t)at->layer * s->n_ctx * kv_dim;
    /* llama.cpp sums single tokens and batches in different orders (kernels/sums.c) */
    const isa_id isa = isa_active();
    const isa_kernels *k = isa_kernels_of(isa);
    dot_fn dot16 = at->T == 1 ? type_get(T_F16)->dot[isa] : type_get(T_F16)->dot_batch[isa];
    const lane_order *lo = at->T == 1 ? &k->sums->f16_single : &k->sums->f16_batch;
    for (int item = ith; item < at->T * m->n_head; item += nth) {
        int t = item / m->n_head, h = item % m->n_head, n_kv = s->n_past + t + 1;
        size_t koff = (size_t)(h / group) * hd;
        to_f16(s->q + (size_t)t * m->dim + (size_t)h * hd, q16, hd);
        float mx = -INFINITY;
        for (int p = 0; p < n_kv; p++) {
            dot16(hd, kc + (size_t)p * kv_dim + koff, q16, &att[p]);
            att[p] *= scale;
            if (att[p] > mx) mx = att[p];
        }
        for (int p = 0; p < n_kv; p++) att[p] -= mx;
        k->exp(n_kv, att, att);
        float inv = (float)(1.0 / k->sums->softmax_sum(att, n_kv));
        for (int p = 0; p < n_kv; p++) att[p] *= inv;
        to_f16(att, p16, n_kv); /* the row conversion rounds as f32_to_fp16 does (to nearest even) */
        type_get(T_F16)->to_float[isa](p16, att, n_kv); /* the fp16 values that weight V */
        k->lane_sums_f16(hd, lo->lanes, n_kv, att, vc + koff, kv_dim, lanes);
        lo->reduce(lanes, hd, s->xb + (size_t)t * m->dim + (size_t)h * hd);
    }
}

typedef struct {
    const model *m;
    state *s;
    int T;
} hadamard_task;

static void hadamard_rows(void *arg, int ith, int nth) {
    hadamard_task *ht = arg;
    for (int t = ith; t < ht->T; t += nth) hadamard_apply(&ht->m->ffn_hadamard, ht->s->hb + (size_t)t * ht->m->ffn_dim);
}

/* down_proj's input f <- H f for each token (the converter stored W_down H^T). */
static void ffn_hadamard(const model *m, state *s, int T) {
    hadamard_task ht = {m, s, T};
    if (T == 1)
        hadamard_rows(&ht, 0, 1);
    else
        pool_run(s->pool, hadamard_rows, &ht);
}

void forward(const model *m, state *s, const int32_t *tokens, int T) {
    int dim = m->dim, hd = m->head_dim, kv_dim = m->n_head_kv * hd, ffn = m->ffn_dim, rows = T;
    for (int t = 0; t < T; t++) {
        type_get(m->tok_embd.type)->get_row(&m->tok_embd, tokens[t], s->x + (size_t)t * dim);
        rope_table(s->rope + (size_t)t * m->rope_dim, s->n_past + t, m->rope_dim, m->rope_base);
    }
    for (int l = 0; l < m->n_layer; l++) {
        const layer *L = &m->layers[l];
        for (int t = 0; t < T; t++) rmsnorm(s->xb + (size_t)t * dim, s->x + (size_t)t * dim, L->attn_norm, dim, m->rms_eps);
        matmul(s, s->xb, T, 3, &L->wq, s->q, &L->wk, s->k, &L->wv, s->v);
        size_t cache = ((size_t)l * s->n_ctx + s->n_past) * kv_dim;
        for (int t = 0; t < T; t++) {
            float *q = s->q + (size_t)t * dim, *k = s->k + (size_t)t * kv_dim, *v = s->v + (size_t)t * kv_dim;
            if (L->bq)
                for (int i = 0; i < dim; i++) q[i] += L->bq[i];
            if (L->bk)
                for (int i = 0; i < kv_dim; i++) k[i] += L->bk[i];
            if (L->bv)
                for (int i = 0; i < kv_dim; i++) v[i] += L->bv[i];
            const float *cs = s->rope + (size_t)t * m->rope_dim;
            for (int h = 0; h < m->n_head; h++) rope(q + h * hd, cs, m->rope_dim, m->arch->rope_neox);
            for (int h = 0; h < m->n_head_kv; h++) rope(k + h * hd, cs, m->rope_dim, m->arch->rope_neox);
            to_f16(k, s->k_cache + cache + (size_t)t * kv_dim, kv_dim);
            to_f16(v, s->v_cache + cache + (size_t)t * kv_dim, kv_dim);
        }
        attn_task at = {m, s, l, T};
        pool_run(s->pool, attention, &at);
        matmul(s, s->xb, T, 1, &L->wo, s->xb2, NULL, NULL, NULL, NULL);
        /* As llama.cpp does, the last layer's FFN and the output run only on the rows that give logits
         * (the sums then take the single-row order when that is one row). */
        if (l == m->n_layer - 1 && !s->logits_all && rows > 1) {
            memmove(s->x, s->x + (size_t)(rows - 1) * dim, (size_t)dim * sizeof(float));
            memmove(s->xb2, s->xb2 + (size_t)(rows - 1) * dim, (size_t)dim * sizeof(float));
            rows = 1;
        }
        for (size_t i = 0; i < (size_t)rows * dim; i++) s->x[i] += s->xb2[i];

        for (int t = 0; t < rows; t++) rmsnorm(s->xb + (size_t)t * dim, s->x + (size_t)t * dim, L->ffn_norm, dim, m->rms_eps);
        matmul(s, s->xb, rows, 2, &L->w_gate, s->hb, &L->w_up, s->hb2, NULL, NULL);
        isa_kernels_active()->swiglu((int64_t)rows * ffn, s->hb, s->hb, s->hb2);
        if (m->ffn_hadamard.base) ffn_hadamard(m, s, rows);
        matmul(s, s->hb, rows, 1, &L->w_down, s->xb, NULL, NULL, NULL, NULL);
        for (size_t i = 0; i < (size_t)rows * dim; i++) s->x[i] += s->xb[i];
    }
    s->n_logits = rows;
    for (int t = 0; t < rows; t++)
        rmsnorm(s->xb + (size_t)t * dim, s->x + (size_t)t * dim, m->out_norm, dim, m->rms_eps);
    const float *head_in = s->xb;
    if (m->output_mix.data) { /* a rotated tied head: the final norm's gain as a dim x dim mix */
        matmul(s, s->xb, rows, 1, &m->output_mix, s->xb2, NULL, NULL, NULL, NULL);
        head_in = s->xb2;
    }
    matmul(s, head_in, rows, 1, &m->output, s->logits, NULL, NULL, NULL, NULL);
    s->n_past += T;
}
