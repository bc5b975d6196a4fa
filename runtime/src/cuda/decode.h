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

#define PVQD_MAX_D 64

/* The tables of one layout, as pointers into one blob (host or device memory; plan.h builds it). */
typedef struct pvqd_tables {
    int D, K, gain_bits, field_bits;
    int fast;                  /* D == 8, index < 2^31, K <= 127: the table-driven path */
    int ntab;                  /* fast: entries of cum/n2/base_lo/base_hi, a power of two > K + 1 */
    const uint32_t *cum, *n2, *base_lo, *base_hi, *lut4; /* fast path (pvq_fast8's tables) */
    const uint64_t *count;     /* count[d * (K + 1) + k] = N(d, k): the generic path */
    const float *levels;       /* 2^gain_bits gain levels */
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

/* D == 8 fast path: the point of index idx (< 2^31) as two words of four int8 coordinates. */
PVQ_HD void pvqd_point8(const pvqd_tables *t, uint32_t idx, uint32_t *lo, uint32_t *hi)
{
    int k1 = 0;                                 /* largest k1 with cum[k1] <= idx (cum[j > K] is 2^31 - 1) */
    for (int step = t->ntab >> 1; step; step >>= 1)
        if (t->cum[k1 + step] <= idx) k1 += step;
    uint32_t r = idx - t->cum[k1], n2 = t->n2[k1], q = r / n2;
    *lo = t->lut4[t->base_lo[k1] + q];
    *hi = t->lut4[t->base_hi[k1] + (r - q * n2)];
}

PVQ_HD int pvqd_coord(uint32_t word, int j) { return (int)(int8_t)(uint8_t)(word >> (8 * j)); }

/* Generic path: the point of any index of P(D, K) by the halves enumeration, with an explicit stack. */
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
        int d1 = d / 2, d2 = d - d1, k1 = 0;
        for (;; k1++) {
            uint64_t block = t->count[d1 * K1 + k1] * t->count[d2 * K1 + k - k1];
            if (r < block) break;
            r -= block;
        }
        uint64_t n2 = t->count[d2 * K1 + k - k1];
        st[top].d = d1; st[top].k = k1; st[top].col = col; st[top].r = r / n2; top++;
        st[top].d = d2; st[top].k = k - k1; st[top].col = col + d1; st[top].r = r % n2; top++;
    }
}

/* The weight scale of a group: s = scale * level[code] / sqrt(sum y^2), rounded as the format says. */
PVQ_HD float pvqd_group_scale(const pvqd_tables *t, uint64_t field, float row_scale, int32_t sumsq)
{
    float gain = row_scale * t->levels[field & ((1u << t->gain_bits) - 1)];
    return gain / sqrtf((float)sumsq);
}

/* One D == 8 group from its field: y in two words, returns s. */
PVQ_HD float pvqd_group8(const pvqd_tables *t, uint64_t field, float row_scale, uint32_t *lo, uint32_t *hi)
{
    pvqd_point8(t, (uint32_t)(field >> t->gain_bits), lo, hi);
    int32_t q = 0;
    for (int j = 0; j < 4; j++) {
        int a = pvqd_coord(*lo, j), b = pvqd_coord(*hi, j);
        q += a * a + b * b;
    }
    return pvqd_group_scale(t, field, row_scale, q);
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
