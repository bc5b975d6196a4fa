/* The closed forms of the PVQ enumeration (docs/format.md, "Enumeration of the pyramid"): pairs as
 * quarter-arcs and halves of four by colex ranks.  Plain C that the codec's reference decoder
 * (pvq_codec.c) and the CUDA decoder (cuda/decode.h, compiled by nvcc and cc) both include, so that
 * one rule decodes everywhere. */
#ifndef PVQ_ENUM_H
#define PVQ_ENUM_H

#include <stdint.h>

#ifndef PVQ_HD
#if defined(__CUDACC__)
#define PVQ_HD __host__ __device__ __forceinline__
#else
#define PVQ_HD static inline
#endif
#endif

PVQ_HD uint64_t pvq_binom2(uint64_t c) { return c < 2 ? 0 : c * (c - 1) / 2; }
PVQ_HD uint64_t pvq_binom3(uint64_t c) { return c < 3 ? 0 : c * (c - 1) / 2 * (c - 2) / 3; }

/* The largest c in [lo, hi] with C(c, r) <= s (r = 2 or 3; C(lo, r) <= s). */
PVQ_HD uint64_t pvq_unrank_binom(int r, uint64_t s, uint64_t lo, uint64_t hi)
{
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo + 1) / 2;
        if ((r == 3 ? pvq_binom3(mid) : pvq_binom2(mid)) <= s) lo = mid; else hi = mid - 1;
    }
    return lo;
}

/* Point 4t + q of P(2, n): rot^q (t, n - t), rot(a, b) = (-b, a). */
PVQ_HD void pvq_pair_point(int n, uint64_t code, int32_t *y)
{
    int32_t a = (int32_t)(code >> 2), b = n - a;
    for (int q = 0; q < (int)(code & 3); q++) { int32_t r = -b; b = a; a = r; }
    y[0] = a; y[1] = b;
}

/* Point h of P(4, k): the edges (one pair empty) below 8k, then 16 quarter pairs per 3-subset
 * c1 < c2 < c3 of [0, k] in colex order, the pairs holding c2 and k - c2 pulses. */
PVQ_HD void pvq_half_point(int k, uint64_t h, int32_t *y)
{
    if (k == 0) { y[0] = y[1] = y[2] = y[3] = 0; return; }
    if (h < 8 * (uint64_t)k) {
        int side = h >> 2 >= (uint64_t)k;
        pvq_pair_point(side ? k : 0, side ? h - 4 * (uint64_t)k : 0, y);
        pvq_pair_point(side ? 0 : k, side ? 0 : h, y + 2);
        return;
    }
    uint64_t u = h - 8 * (uint64_t)k, s = u >> 4;
    uint64_t c3 = pvq_unrank_binom(3, s, 2, (uint64_t)k);
    s -= pvq_binom3(c3);
    uint64_t c2 = pvq_unrank_binom(2, s, 1, c3 - 1), c1 = s - pvq_binom2(c2);
    pvq_pair_point((int)c2, c1 << 2 | (u >> 2 & 3), y);
    pvq_pair_point(k - (int)c2, (c3 - c2 - 1) << 2 | (u & 3), y + 2);
}

#endif
