/* Host-side planning of the CUDA kernels (plan.h). */
#include "plan.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t align8(size_t v) { return (v + 7) & ~(size_t)7; }

int pvq_cuda_tables_build(pvq_cuda_tables *t, const pvq_codec *c)
{
    memset(t, 0, sizeof *t);
    pvqd_tables *s = &t->shape;
    s->D = c->D; s->K = c->K; s->gain_bits = c->gain_bits; s->field_bits = c->field_bits;
    s->fast = c->fast != NULL;
    size_t ntab = s->fast ? (size_t)c->fast->ntab : 0, lut = s->fast ? c->fast->lut4_len : 0;
    size_t count_len = (size_t)(c->D + 1) * (size_t)(c->K + 1), n_sqrt = (size_t)c->K * (size_t)c->K + 1;
    s->ntab = (int)ntab;
    if (s->fast) {
        s->bucket_shift = c->fast->bucket_shift;
        s->exact_div = c->fast->exact_div;
        s->bucket_len = (uint32_t)c->fast->bucket_len;
    }
    size_t off = 0;
    t->off_count = off;   off = align8(off + count_len * sizeof(uint64_t));
    t->off_class_base = off; off = align8(off + (c->class_base ? (size_t)c->K + 2 : 0) * sizeof(uint64_t));
    t->off_cum = off;     off = align8(off + ntab * sizeof(uint32_t));
    t->off_n2 = off;      off = align8(off + ntab * sizeof(uint32_t));
    t->off_base_lo = off; off = align8(off + ntab * sizeof(uint32_t));
    t->off_base_hi = off; off = align8(off + ntab * sizeof(uint32_t));
    t->off_lut4 = off;    off = align8(off + lut * sizeof(uint32_t));
    t->off_inv_n2 = off;  off = align8(off + ntab * sizeof(float));
    t->off_inv_n2d = off; off = align8(off + ntab * sizeof(double));
    t->off_bucket = off;  off = align8(off + s->bucket_len);
    t->off_inv_sqrt = off; off = align8(off + (s->fast ? n_sqrt : 0) * sizeof(float));
    t->bytes = off;
    if (!(t->blob = calloc(1, t->bytes))) return -1;
    memcpy(t->blob + t->off_count, c->count, count_len * sizeof(uint64_t));
    if (c->class_base) memcpy(t->blob + t->off_class_base, c->class_base, ((size_t)c->K + 2) * sizeof(uint64_t));
    t->has_class_base = c->class_base != NULL;
    if (s->fast) {
        memcpy(t->blob + t->off_cum, c->fast->cum, ntab * sizeof(uint32_t));
        memcpy(t->blob + t->off_n2, c->fast->n2, ntab * sizeof(uint32_t));
        memcpy(t->blob + t->off_base_lo, c->fast->base_lo, ntab * sizeof(uint32_t));
        memcpy(t->blob + t->off_base_hi, c->fast->base_hi, ntab * sizeof(uint32_t));
        memcpy(t->blob + t->off_lut4, c->fast->lut4, lut * sizeof(uint32_t));
        memcpy(t->blob + t->off_inv_n2, c->fast->inv_n2, ntab * sizeof(float));
        memcpy(t->blob + t->off_bucket, c->fast->bucket_k1, s->bucket_len);
        double *inv_d = (double *)(t->blob + t->off_inv_n2d);
        for (size_t k = 0; k < ntab; k++) inv_d[k] = c->fast->n2[k] ? 1.0 / (double)c->fast->n2[k] : 0.0;
        float *inv_sqrt = (float *)(t->blob + t->off_inv_sqrt);
        for (size_t q = 1; q < n_sqrt; q++) inv_sqrt[q] = 1.0f / sqrtf((float)q);
    }
    return 0;
}

void pvq_cuda_tables_free(pvq_cuda_tables *t)
{
    free(t->blob);
    memset(t, 0, sizeof *t);
}

pvqd_tables pvq_cuda_tables_bind(const pvq_cuda_tables *t, const void *base, const float *levels)
{
    const uint8_t *b = base;
    pvqd_tables s = t->shape;
    s.count = (const uint64_t *)(b + t->off_count);
    s.class_base = t->has_class_base ? (const uint64_t *)(b + t->off_class_base) : NULL;
    s.levels = levels;
    s.cum = (const uint32_t *)(b + t->off_cum);
    s.n2 = (const uint32_t *)(b + t->off_n2);
    s.base_lo = (const uint32_t *)(b + t->off_base_lo);
    s.base_hi = (const uint32_t *)(b + t->off_base_hi);
    s.lut4 = (const uint32_t *)(b + t->off_lut4);
    s.inv_n2 = (const float *)(b + t->off_inv_n2);
    s.inv_n2d = (const double *)(b + t->off_inv_n2d);
    s.bucket_k1 = b + t->off_bucket;
    s.inv_sqrt = (const float *)(b + t->off_inv_sqrt);
    return s;
}

size_t pvq_gemv_staged_bytes(const pvqd_tables *t)
{
    const size_t ntab = (size_t)t->ntab;
    return ntab * sizeof(double) + 5 * ntab * sizeof(uint32_t) + ((size_t)1 << t->gain_bits) * sizeof(float) +
           align8(t->bucket_len);
}

pvq_gemv_plan pvq_gemv_plan_make(const pvqd_tables *t, int fast, int64_t rows, unsigned max_blocks)
{
    pvq_gemv_plan p;
    p.block = 32 * PVQ_GEMV_WARPS;
    p.grid = (unsigned)((rows + PVQ_GEMV_WARPS - 1) / PVQ_GEMV_WARPS);
    if (max_blocks && p.grid > max_blocks) p.grid = max_blocks;
    p.chunk_groups = 32 * PVQ_GEMV_GROUPS_PER_LANE;
    /* a chunk starting at any bit offset within its first word: the window of pvqd_chunk_window */
    p.window_words = (unsigned)((31 + (uint64_t)p.chunk_groups * (uint64_t)t->field_bits + 31) / 32) + 2;
    p.tables_offset = align8((size_t)PVQ_GEMV_WARPS * p.window_words * sizeof(uint32_t));
    p.smem_bytes = p.tables_offset + (fast ? pvq_gemv_staged_bytes(t) : 0);
    return p;
}

pvq_mma_plan pvq_mma_plan_make(int D, int64_t n_in, int64_t rows, int n_tokens)
{
    pvq_mma_plan p;
    memset(&p, 0, sizeof p);
    p.usable = n_tokens > 1 && n_in % PVQ_MMA_K == 0 && PVQ_MMA_K % D == 0;
    p.block = 32 * PVQ_MMA_WARPS;
    p.grid_x = (unsigned)((rows + PVQ_MMA_ROWS - 1) / PVQ_MMA_ROWS);
    p.grid_y = (unsigned)((n_tokens + PVQ_MMA_TOKENS - 1) / PVQ_MMA_TOKENS);
    /* fp16 tiles of W and X, and the fp32 output tile */
    p.smem_bytes = (size_t)(PVQ_MMA_ROWS + PVQ_MMA_TOKENS) * PVQ_MMA_K * 2 +
                   (size_t)PVQ_MMA_ROWS * PVQ_MMA_TOKENS * 4;
    return p;
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

int pvq_hadamard_plan_make(pvq_hadamard_plan *hp, int64_t n, const int8_t *base, size_t base_len, int p,
                           float scale, char *err, size_t errlen)
{
    memset(hp, 0, sizeof *hp);
    size_t h = 0;
    while (h * h < base_len) h++;
    if (h == 0 || h * h != base_len)
        return fail(err, errlen, "ffn_hadamard.base has %zu entries, not a square", base_len);
    if (p < 1 || (p & (p - 1)))
        return fail(err, errlen, "ffn_hadamard.p = %d is not a power of two", p);
    if ((int64_t)h * p != n)
        return fail(err, errlen, "ffn_hadamard: h * p = %zu * %d is not n_ff = %lld", h, p, (long long)n);
    if (!isfinite(scale) || !(scale > 0))
        return fail(err, errlen, "ffn_hadamard.scale = %g is not finite and positive", (double)scale);
    int r = -1;
    for (size_t a = 0; a < h; a++) {
        int nz = 0;
        for (size_t j = 0; j < h; j++) {
            int8_t v = base[a * h + j];
            if (v < -1 || v > 1) return fail(err, errlen, "ffn_hadamard.base[%zu][%zu] = %d", a, j, v);
            nz += v != 0;
        }
        if (r < 0) r = nz;
        /* B B^T = r I: row a against every row */
        for (size_t b = 0; b < h; b++) {
            int dot = 0;
            for (size_t j = 0; j < h; j++) dot += base[a * h + j] * base[b * h + j];
            if (dot != (a == b ? r : 0))
                return fail(err, errlen, "ffn_hadamard.base: rows %zu and %zu give %d, B B^T is not %d I", a, b,
                            dot, r);
        }
    }
    hp->h = (int)h; hp->p = p; hp->scale = scale; hp->base = base;
    hp->block = p >= 1024 ? 1024 : (p >= 128 ? (unsigned)p : 128);
    hp->smem_bytes = (size_t)n * sizeof(float);
    return 0;
}

size_t pvq_attention_smem_bytes(int n_ctx, int head_dim)
{
    /* scores (fp32) of every position, the probabilities as fp16, and the fp16 query */
    return (size_t)n_ctx * sizeof(float) + (size_t)n_ctx * 2 + (size_t)head_dim * 2 + 64;
}
