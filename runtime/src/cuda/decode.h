/* PVQ group decoding shared by the CUDA kernels and the host: the same source is compiled by nvcc
 * for the device and by cc for the host checks (tools/test_cuda_plan.c), so the decode rule the GPU
 * runs is tested against the codec's scalar reference on machines without a GPU.
 *
 * The arithmetic is the format's (pvq_codec.h): gain = scale * level[code] (float32 multiply),
 * s = gain / sqrtf((float) sum y^2), w_i = (float) y_i * s.  nvcc keeps sqrtf and '/' correctly
 * rounded unless -use_fast_math is given, which the Makefile never passes. */
#ifndef PVQ_CUDA_DECODE_H
#define PVQ_CUDA_DECODE_H

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define PVQ_HD __host__ __device__ __forceinline__
#else
#define PVQ_HD static inline
#endif

#include "../kernels/pvq_enum.h"

#define PVQD_MAX_D 64

/* The tables of one layout, as pointers into one blob (host or device memory; plan.h builds it). */
typedef struct pvqd_tables {
    int D, K, gain_bits, field_bits;
    int fast;                  /* D == 8, index < 2^31, K <= 127: the table-driven path */
    /* fast path (pvq_fast8's tables): per k1 < ntab the class start cum, the divisor n2 and the lut4
     * offsets; k1 of an index is bucket_k1[idx >> bucket_shift] or the next */
    int ntab, bucket_shift, exact_div;
    uint32_t bucket_len;
    const uint32_t *cum, *n2, *base_lo, *base_hi, *lut4;
    const float *inv_n2;       /* 1 / n2 in float32: exact quotients when exact_div */
    const double *inv_n2d;     /* 1 / n2 in float64: exact quotients otherwise */
    const uint8_t *bucket_k1;
    const float *inv_sqrt;     /* [K * K + 1]: 1 / sqrtf(q), the GEMV's factor per sum of squares q */
    const uint64_t *count;     /* count[d * (K + 1) + k] = N(d, k): the generic path */
    const uint64_t *class_base; /* the top level's classes (pvq_codec.class_base), NULL for D = 2, 4 */
    const float *levels;       /* 2^gain_bits gain levels (per tensor) */
} pvqd_tables;

/* Field starting at bit `bit` of a window of little-endian 32-bit words (W <= 56); reads words
 * bit/32 .. bit/32 + 2, so a window holds two spare words after its last field. */
PVQ_HD uint64_t pvqd_field(const uint32_t *words, uint32_t bit, int W)
{
    uint32_t w = bit >> 5, sh = bit & 31;
    uint64_t v = ((uint64_t)words[w] | (uint64_t)words[w + 1] << 32) >> sh;
    if (sh + (uint32_t)W > 64) v |= (uint64_t)words[w + 2] << (64 - sh);
    return v & ((UINT64_C(1) << W) - 1);
}

/* D == 8 fast path: the point of index idx (< 2^31) as two words of four int8 coordinates.
 * k1 from the bucket table and one compare; the quotient r / n2 from a reciprocal product, exact
 * because (r + 1/2) / n2 lies at least 1 / (2 n2) from an integer: in float32 when r + n2 < 2^22
 * (the codec's exact_div), in float64 otherwise (its error is below r 2^-52 / n2 <= 2^-21 / n2). */
PVQ_HD void pvqd_point8(const pvqd_tables *t, uint32_t idx, uint32_t *lo, uint32_t *hi)
{
    int k1 = t->bucket_k1[idx >> t->bucket_shift];
    k1 += idx >= t->cum[k1 + 1];                  /* cum[j > K] = 2^31 - 1: above every index */
    const uint32_t r = idx - t->cum[k1], n2 = t->n2[k1];
    const uint32_t q = t->exact_div ? (uint32_t)(((float)r + 0.5f) * t->inv_n2[k1])
                                    : (uint32_t)(((double)r + 0.5) * t->inv_n2d[k1]);
    *lo = t->lut4[t->base_lo[k1] + q];
    *hi = t->lut4[t->base_hi[k1] + (r - q * n2)];
}

/* Sum of squares of the eight int8 coordinates of a D == 8 point. */
PVQ_HD int32_t pvqd_sumsq8(uint32_t lo, uint32_t hi)
{
#if defined(__CUDA_ARCH__)
    return __dp4a((int)lo, (int)lo, __dp4a((int)hi, (int)hi, 0));
#else
    int32_t q = 0;
    for (int j = 0; j < 4; j++) {
        const int a = (int8_t)(uint8_t)(lo >> (8 * j)), b = (int8_t)(uint8_t)(hi >> (8 * j));
        q += a * a + b * b;
    }
    return q;
#endif
}

PVQ_HD int pvqd_coord(uint32_t word, int j) { return (int)(int8_t)(uint8_t)(word >> (8 * j)); }

/* Generic path: the point of any index of P(D, K) (a point's: the reader validated it), with an explicit
 * stack over the halves' split; below the top level the classes are dense. */
PVQ_HD void pvqd_point(const pvqd_tables *t, uint64_t idx, int32_t *y)
{
    struct { int d, k, col; uint64_t r; } st[2 * PVQD_MAX_D];
    const int K1 = t->K + 1;
    int top = 0;
    st[0].d = t->D; st[0].k = t->K; st[0].col = 0; st[0].r = idx; top = 1;
    while (top) {
        top--;
        int d = st[top].d, k = st[top].k, col = st[top].col;
        uint64_t r = st[top].r;
        if (d == 1) { y[col] = r == 0 ? k : -k; continue; }
        if (d == 2) { pvq_pair_point(k, r, y + col); continue; }
        if (d == 4) { pvq_half_point(k, r, y + col); continue; }
        int d1 = d / 2, d2 = d - d1, k1 = 0;
        if (d == t->D && t->class_base) {
            while (k1 < t->K && t->class_base[k1 + 1] <= r) k1++;
            r -= t->class_base[k1];
        } else {
            for (;; k1++) {
                uint64_t block = t->count[d1 * K1 + k1] * t->count[d2 * K1 + k - k1];
                if (r < block) break;
                r -= block;
            }
        }
        uint64_t n2 = t->count[d2 * K1 + k - k1];
        st[top].d = d1; st[top].k = k1; st[top].col = col; st[top].r = r / n2; top++;
        st[top].d = d2; st[top].k = k - k1; st[top].col = col + d1; st[top].r = r % n2; top++;
    }
}

/* The index of the rank-th point of P(D, K) in index order (0 <= rank < N(D, K)): uniform ranks give uniform
 * points (the random matrices of the benchmarks and the self test). */
PVQ_HD uint64_t pvqd_index_of_rank(const pvqd_tables *t, uint64_t rank)
{
    if (!t->class_base) return rank;
    const int K1 = t->K + 1, d1 = t->D / 2, d2 = t->D - d1;
    uint64_t cum = 0;
    for (int k1 = 0;; k1++) {
        const uint64_t size = t->count[d1 * K1 + k1] * t->count[d2 * K1 + t->K - k1];
        if (rank < cum + size || k1 == t->K) return t->class_base[k1] + (rank - cum);
        cum += size;
    }
}

/* The weight scale of a group: s = scale * level[code] / sqrt(sum y^2), rounded as the format says. */
PVQ_HD float pvqd_group_scale(const pvqd_tables *t, uint64_t field, float row_scale, int32_t sumsq)
{
    float gain = row_scale * t->levels[field & ((1u << t->gain_bits) - 1)];
    return gain / sqrtf((float)sumsq);
}

/* One D == 8 group from its field: y in two words, returns s (the format's rounding). */
PVQ_HD float pvqd_group8(const pvqd_tables *t, uint64_t field, float row_scale, uint32_t *lo, uint32_t *hi)
{
    pvqd_point8(t, (uint32_t)(field >> t->gain_bits), lo, hi);
    return pvqd_group_scale(t, field, row_scale, pvqd_sumsq8(*lo, *hi));
}

/* Activations as int8 per step of 128 values, the rule of the CPU's pvq_quantize_x_q8 (in plain order
 * here): d = amax / 127, q_i = x_i * (127 / amax) rounded to nearest even, all 0 when amax is 0. */
#define PVQD_Q8_STEP 128
PVQ_HD float pvqd_q8_inv(float amax) { return amax > 0.0f ? 127.0f / amax : 0.0f; }
PVQ_HD int8_t pvqd_q8(float x, float inv)
{
#if defined(__CUDA_ARCH__)
    return (int8_t)__float2int_rn(x * inv);
#else
    return (int8_t)lrintf(x * inv);
#endif
}

/* The prefill tiles' per-token scale: a token's activations enter the fp16 tiles as x / s, s the power
 * of two that puts their largest magnitude amax in [128, 256).  Dividing and multiplying back by a
 * power of two is exact, no value can overflow fp16 (65504; SwiGLU outputs before down_proj reach far
 * beyond it), and small tokens keep fp16's relative precision.  amax 0, inf or NaN: s = 1. */
PVQ_HD float pvqd_tile_scale(float amax)
{
    if (!(amax > 0.0f && amax <= 3.4028235e38f)) return 1.0f;
    int e;
    frexpf(amax, &e);                               /* amax = m 2^e, m in [0.5, 1) */
    e -= 8;
    return ldexpf(1.0f, e < -126 ? -126 : e);       /* a normal float, so 1 / s is exact too */
}

/* Integer dot of a D == 8 point (two words of int8) with 8 int8 activations (two words). */
PVQ_HD int32_t pvqd_dot8_q8(uint32_t lo, uint32_t hi, uint32_t xlo, uint32_t xhi)
{
#if defined(__CUDA_ARCH__)
    return __dp4a((int)lo, (int)xlo, __dp4a((int)hi, (int)xhi, 0));
#else
    int32_t d = 0;
    for (int j = 0; j < 4; j++)
        d += (int8_t)(uint8_t)(lo >> (8 * j)) * (int8_t)(uint8_t)(xlo >> (8 * j)) +
             (int8_t)(uint8_t)(hi >> (8 * j)) * (int8_t)(uint8_t)(xhi >> (8 * j));
    return d;
#endif
}

/* The GEMV's form of a D == 8 group: s / row_scale = level[code] * (1 / sqrt(q)) from tables, with the
 * row scale applied once per row.  The same products regrouped: within a few float32 roundings of the
 * format's weights (a dot product may sum in any order anyway), and no sqrt or division per group. */
PVQ_HD float pvqd_factor8(const pvqd_tables *t, uint64_t field, uint32_t *lo, uint32_t *hi)
{
    pvqd_point8(t, (uint32_t)(field >> t->gain_bits), lo, hi);
    return t->levels[field & ((1u << t->gain_bits) - 1)] * t->inv_sqrt[pvqd_sumsq8(*lo, *hi)];
}

/* One group of any layout: y[0..D), returns s. */
PVQ_HD float pvqd_group(const pvqd_tables *t, uint64_t field, float row_scale, int32_t *y)
{
    pvqd_point(t, field >> t->gain_bits, y);
    int32_t q = 0;
    for (int i = 0; i < t->D; i++) q += y[i] * y[i];
    return pvqd_group_scale(t, field, row_scale, q);
}

/* Word window of a chunk of groups [g0, g0 + n) of a row that starts at byte `row_off` of a
 * 4-byte-aligned buffer: the chunk's fields lie in words [first, first + count), and group g's field
 * starts at bit (g - g0) * W + bit0 of the window.  count includes the two spare words pvqd_field reads. */
typedef struct { uint64_t first; uint32_t count, bit0; } pvqd_window;

PVQ_HD pvqd_window pvqd_chunk_window(uint64_t row_off, int64_t g0, int n, int W)
{
    uint64_t start = row_off * 8 + (uint64_t)g0 * (uint64_t)W, end = start + (uint64_t)n * (uint64_t)W;
    pvqd_window w;
    w.first = start >> 5;
    w.bit0 = (uint32_t)(start & 31);
    w.count = (uint32_t)(((end + 31) >> 5) - w.first) + 2;
    return w;
}

#endif
