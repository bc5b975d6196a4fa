/* AVX2 kernels of the PVQ type for D == 8 and K <= PVQ_ARITH_MAX_K (pvq_closed_form; other layouts run the
 * table-driven scalar kernels): eight groups per step, one per 32-bit lane, no gather (a gather is 39 uops
 * on Zen 3 and the 4-dim table of the version 1 decoder lived in L2).
 *
 * Per step: the eight W-bit fields (one W-byte chunk of the row) are read with vpshufb and a variable
 * shift, as dwords (every field within 32 bits of its byte) or as qwords (wider fields); the class k1 is a
 * count of the class starts at or below the index, every per-k1 constant a register permute, and the
 * division a float reciprocal product (corrected once unless exact).  The sixteen halves then work in word
 * lanes: an edge test, the colex rank's 3-subset as two counts of binomial thresholds (C(c, 3) <= s, then
 * C(c, 2) <= s2) and two vpshufb lookups of the binomials, edges rewritten as the subsets that give the
 * same pairs; the pairs' quarter-arcs in byte lanes (three vpshufb for the swap and the two signs).
 * ||y||^2 comes from the bytes with maddubs/madd.  The counts' lengths depend on K, so every row kernel
 * is compiled once per preset K (BY_K) with the loops unrolled, and once for any other K.
 * Results equal pvq_ref.c's: dequantize bit-identical (same float operations), the integer dot
 * bit-identical, the float dot up to summation order. */
#include "pvq_codec.h"

#include <immintrin.h>
#include <string.h>

#include "pvq_enum.h"

#define TARGET __attribute__((target("avx2,fma")))
#define INLINE static inline __attribute__((always_inline))

/* stmt with K a constant for the presets' K (pvq_presets.py: 6, 10, 14, 22, 29), else the codec's. */
#define BY_K(c, stmt) do {                                             \
        switch ((c)->K) {                                              \
        case 6:  { enum { K = 6 };  stmt; } break;                     \
        case 10: { enum { K = 10 }; stmt; } break;                     \
        case 14: { enum { K = 14 }; stmt; } break;                     \
        case 22: { enum { K = 22 }; stmt; } break;                     \
        case 29: { enum { K = 29 }; stmt; } break;                     \
        default: { const int K = (c)->K; stmt; } break;               \
        }                                                              \
    } while (0)

/* t[k] for each lane; t has ntab entries (a multiple of 8), lanes k < ntab. */
TARGET INLINE __m256i lookup(const void *t, int ntab, __m256i k)
{
    __m256i r = _mm256_permutevar8x32_epi32(_mm256_loadu_si256((const __m256i *)t), k);
    for (int v = 8; v < ntab; v += 8) {
        __m256i p = _mm256_permutevar8x32_epi32(_mm256_loadu_si256((const __m256i *)((const uint32_t *)t + v)), k);
        r = _mm256_blendv_epi8(r, p, _mm256_cmpgt_epi32(k, _mm256_set1_epi32(v - 1)));
    }
    return r;
}

/* The 16-bit entry t[j] of each word lane, j < 32: tables of the entries' low and high bytes, j < 16 and
 * 16 <= j < 32 (j & 15 at each), in both 128-bit lanes; the high bytes are read only when wide (some entry
 * >= 256), the second tables only when big (some j >= 16).  A word's high index byte is 0, so its low byte
 * of a vpshufb reads entry 0 of the table: those are masked off. */
TARGET INLINE __m256i lookup16(const uint8_t t[4][32], __m256i j, int wide, int big)
{
    const __m256i low = _mm256_set1_epi16(0xFF);
    __m256i r = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)t[0]), j), low);
    if (wide) r = _mm256_or_si256(r, _mm256_slli_epi16(_mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)t[1]), j), 8));
    if (!big) return r;
    __m256i r2 = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)t[2]), j), low);
    if (wide) r2 = _mm256_or_si256(r2, _mm256_slli_epi16(_mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)t[3]), j), 8));
    return _mm256_blendv_epi8(r, r2, _mm256_cmpgt_epi16(j, _mm256_set1_epi16(15)));
}

/* Index and gain code of the eight groups of the chunk at p (readable up to p + W + 32). */
TARGET INLINE void fields8(const pvq_codec *c, const uint8_t *p, __m256i *idx, __m256i *code)
{
    const pvq_fast8 *f = c->fast;
    const int W = c->field_bits, b = c->gain_bits;
    __m256i v;
    if (f->avx2_narrow) {            /* dword j: the four bytes from field j's, shifted */
        __m256i bytes = _mm256_set_m128i(_mm_loadu_si128((const __m128i *)(p + f->avx2_base1)),
                                         _mm_loadu_si128((const __m128i *)p));
        v = _mm256_shuffle_epi8(bytes, _mm256_loadu_si256((const __m256i *)f->avx2_shuf));
        v = _mm256_srlv_epi32(v, _mm256_loadu_si256((const __m256i *)f->avx2_shift));
        v = _mm256_and_si256(v, _mm256_set1_epi32((int)(0xFFFFFFFFu >> (32 - W))));
    } else {                         /* qwords: fields 0, 1 | 4, 5 and 2, 3 | 6, 7, then their low dwords */
        const __m256i mask = _mm256_set1_epi64x((long long)((UINT64_C(1) << W) - 1));
        __m256i a = _mm256_set_m128i(_mm_loadu_si128((const __m128i *)(p + f->avx2_wide_base[1])),
                                     _mm_loadu_si128((const __m128i *)(p + f->avx2_wide_base[0])));
        __m256i d = _mm256_set_m128i(_mm_loadu_si128((const __m128i *)(p + f->avx2_wide_base[3])),
                                     _mm_loadu_si128((const __m128i *)(p + f->avx2_wide_base[2])));
        a = _mm256_shuffle_epi8(a, _mm256_loadu_si256((const __m256i *)f->avx2_wide_shuf));
        d = _mm256_shuffle_epi8(d, _mm256_loadu_si256((const __m256i *)(f->avx2_wide_shuf + 32)));
        a = _mm256_and_si256(_mm256_srlv_epi64(a, _mm256_loadu_si256((const __m256i *)f->avx2_wide_shift)), mask);
        d = _mm256_and_si256(_mm256_srlv_epi64(d, _mm256_loadu_si256((const __m256i *)(f->avx2_wide_shift + 4))), mask);
        *code = _mm256_castps_si256(_mm256_shuffle_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(d), 0x88));
        *code = _mm256_and_si256(*code, _mm256_set1_epi32((1 << b) - 1));
        *idx = _mm256_castps_si256(_mm256_shuffle_ps(_mm256_castsi256_ps(_mm256_srli_epi64(a, b)),
                                                     _mm256_castsi256_ps(_mm256_srli_epi64(d, b)), 0x88));
        return;
    }
    *idx = _mm256_srli_epi32(v, b);
    *code = _mm256_and_si256(v, _mm256_set1_epi32((1 << b) - 1));
}

/* Each statement so marked runs for the U (1 or 2) chunks side by side: one chunk's decoding is a chain of
 * ~120 cycles on Zen 3, longer than the core's window of vector instructions can cover alone. */
#define EACH _Pragma("GCC unroll 2") for (int u = 0; u < U; u++)

/* The points of U chunks of eight groups with indices idx as int8 x 4 per lane (lo: coordinates 0-3, hi: 4-7). */
TARGET INLINE void points8(const pvq_codec *c, int U, const __m256i *idx, const int K, __m256i *lo, __m256i *hi)
{
    const pvq_fast8 *f = c->fast;
    const int ntab = K <= 14 ? 16 : 32;
    __m256i k1[2], q[2], rem[2];
    /* the class: k1 = #{j in 1..K : cum[j] <= idx}, as two sums so that the chains stay short */
    EACH {
        __m256i n[2] = { _mm256_setzero_si256(), _mm256_setzero_si256() };
#pragma GCC unroll 32
        for (int j = 1; j <= K; j++)
            n[j & 1] = _mm256_sub_epi32(n[j & 1], _mm256_cmpgt_epi32(idx[u], _mm256_loadu_si256((const __m256i *)f->avx2_cum[j])));
        k1[u] = _mm256_add_epi32(n[0], n[1]);
    }
    EACH {
        __m256i r = _mm256_sub_epi32(idx[u], lookup(f->cum, ntab, k1[u]));
        __m256i n2 = lookup(f->n2, ntab, k1[u]);
        __m256 inv = _mm256_castsi256_ps(lookup(f->inv_n2, ntab, k1[u]));
        if (f->exact_div) {          /* see pvq_fast8.exact_div: no correction needed */
            q[u] = _mm256_cvttps_epi32(_mm256_fmadd_ps(_mm256_cvtepi32_ps(r), inv, _mm256_mul_ps(inv, _mm256_set1_ps(0.5f))));
            rem[u] = _mm256_sub_epi32(r, _mm256_mullo_epi32(q[u], n2));
        } else {
            q[u] = _mm256_cvttps_epi32(_mm256_mul_ps(_mm256_cvtepi32_ps(r), inv));
            rem[u] = _mm256_sub_epi32(r, _mm256_mullo_epi32(q[u], n2));
            __m256i neg = _mm256_cmpgt_epi32(_mm256_setzero_si256(), rem[u]);
            q[u] = _mm256_add_epi32(q[u], neg);
            rem[u] = _mm256_add_epi32(rem[u], _mm256_and_si256(neg, n2));
            __m256i over = _mm256_cmpgt_epi32(rem[u], _mm256_sub_epi32(n2, _mm256_set1_epi32(1)));
            q[u] = _mm256_sub_epi32(q[u], over);
            rem[u] = _mm256_sub_epi32(rem[u], _mm256_and_si256(over, n2));
        }
    }
    if (f->gather_halves) {     /* the points from lut4 (pvq_fast8.gather_halves) */
        EACH {
            lo[u] = _mm256_i32gather_epi32((const int *)f->lut4, _mm256_add_epi32(lookup(f->base_lo, ntab, k1[u]), q[u]), 4);
            hi[u] = _mm256_i32gather_epi32((const int *)f->lut4, _mm256_add_epi32(lookup(f->base_hi, ntab, k1[u]), rem[u]), 4);
        }
        return;
    }
    /* the halves in word lanes (lane l of 128: groups 4l..4l+3's first halves, then their second halves):
     * h their indices, k their pulses */
    const __m256i one = _mm256_set1_epi16(1);
    __m256i h[2], k[2], u16[2], s[2], edge[2], c3[2], c2[2], c1[2];
    EACH {
        h[u] = _mm256_packus_epi32(q[u], rem[u]);
        k[u] = _mm256_packus_epi32(k1[u], _mm256_sub_epi32(_mm256_set1_epi32(K), k1[u]));
        __m256i k8 = _mm256_slli_epi16(k[u], 3);
        edge[u] = _mm256_cmpeq_epi16(_mm256_min_epu16(h[u], _mm256_subs_epu16(k8, one)), h[u]);  /* h < max(8k, 1) */
        u16[u] = _mm256_sub_epi16(h[u], k8);
        s[u] = _mm256_srli_epi16(u16[u], 4);     /* the colex rank (edges: any value below 4096) */
    }
    EACH {                                       /* c3 - 2 = #{c in 3..K : C(c, 3) <= s} */
        __m256i n[2] = { _mm256_setzero_si256(), _mm256_setzero_si256() };
#pragma GCC unroll 32
        for (int cc = 3; cc <= K; cc++)
            n[cc & 1] = _mm256_sub_epi16(n[cc & 1], _mm256_cmpgt_epi16(s[u], _mm256_loadu_si256((const __m256i *)f->avx2_thr3[cc])));
        c3[u] = _mm256_add_epi16(n[0], n[1]);
    }
    EACH s[u] = _mm256_sub_epi16(s[u], lookup16(f->avx2_binom3, c3[u], K >= 13, K >= 18));   /* s2 */
    EACH {                                       /* c2 = #{c in 1..K - 1 : C(c, 2) <= s2} */
        __m256i n[2] = { one, _mm256_setzero_si256() };
#pragma GCC unroll 32
        for (int cc = 2; cc < K; cc++)
            n[cc & 1] = _mm256_sub_epi16(n[cc & 1], _mm256_cmpgt_epi16(s[u], _mm256_loadu_si256((const __m256i *)f->avx2_thr2[cc])));
        c2[u] = _mm256_add_epi16(n[0], n[1]);
    }
    EACH c1[u] = _mm256_sub_epi16(s[u], lookup16(f->avx2_binom2, c2[u], K >= 24, K >= 17));
    /* an edge e = h >> 2 < k is (0, pair(k, e, q)): the subset (0, 0, e + 1); else (pair(k, e - k, q), 0):
     * (e - k, k, k + 1); q = h & 3 for its one pair.  Then the pairs (t, n - t) and quarters: P = (c1, c2 - c1)
     * by qP, Q = (c3 - c2 - 1, k - c3 + 1) by h & 3; bytes: in each 128-bit lane its eight halves' P, then their Q */
    const __m256i three = _mm256_set1_epi16(3);
    const __m256i swap_of_q = _mm256_setr_epi8(0, -1, 0, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                               0, -1, 0, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m256i sign1_of_q = _mm256_setr_epi8(1, -1, -1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                                1, -1, -1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m256i sign2_of_q = _mm256_setr_epi8(1, 1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                                1, 1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    EACH {
        __m256i e = _mm256_srli_epi16(h[u], 2), km1 = _mm256_sub_epi16(k[u], one);
        __m256i side = _mm256_cmpgt_epi16(e, km1);
        __m256i x1 = _mm256_blendv_epi8(c1[u], _mm256_and_si256(side, _mm256_sub_epi16(e, k[u])), edge[u]);
        __m256i x2 = _mm256_blendv_epi8(c2[u], _mm256_and_si256(side, k[u]), edge[u]);
        __m256i x3 = _mm256_blendv_epi8(c3[u], _mm256_blendv_epi8(_mm256_sub_epi16(e, one), km1, side), edge[u]);
        __m256i qP = _mm256_blendv_epi8(_mm256_srli_epi16(u16[u], 2), h[u], edge[u]);
        __m256i ta = _mm256_packs_epi16(x1, _mm256_sub_epi16(_mm256_add_epi16(x3, one), x2));
        __m256i tb = _mm256_packs_epi16(_mm256_sub_epi16(x2, x1), _mm256_sub_epi16(km1, x3));
        __m256i qb = _mm256_packs_epi16(_mm256_and_si256(qP, three), _mm256_and_si256(h[u], three));
        /* rot^q (a, b), rot(a, b) = (-b, a): q odd swaps, q = 1, 2 negates the first, q = 2, 3 the second */
        __m256i swap = _mm256_shuffle_epi8(swap_of_q, qb);
        __m256i x = _mm256_sign_epi8(_mm256_blendv_epi8(ta, tb, swap), _mm256_shuffle_epi8(sign1_of_q, qb));
        __m256i y = _mm256_sign_epi8(_mm256_blendv_epi8(tb, ta, swap), _mm256_shuffle_epi8(sign2_of_q, qb));
        /* (x, y) of P, then of Q, per half; words P Q per half: dwords of first halves, then second halves */
        __m256i pxy = _mm256_unpacklo_epi8(x, y), qxy = _mm256_unpackhi_epi8(x, y);
        lo[u] = _mm256_unpacklo_epi16(pxy, qxy);
        hi[u] = _mm256_unpackhi_epi16(pxy, qxy);
    }
}

/* Decodes U chunks of eight groups, the u-th at p[u] (W bytes, readable up to p[u] + W + 32): points as int8
 * (lo: coordinates 0-3, hi: 4-7, one group per lane) and the per-group weight scales s. */
TARGET INLINE void decode8(const pvq_codec *c, int U, const uint8_t *const *p, float scale, const int K,
                           __m256i *lo, __m256i *hi, __m256 *s)
{
    __m256i idx[2], codes[2];
    EACH fields8(c, p[u], &idx[u], &codes[u]);
    points8(c, U, idx, K, lo, hi);
    const __m256i ones = _mm256_set1_epi16(1);
    const int nlev = 1 << c->gain_bits;
    EACH {
        __m256i alo = _mm256_abs_epi8(lo[u]), ahi = _mm256_abs_epi8(hi[u]);     /* |y| <= 127 */
        __m256i sq = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(alo, alo), ones),
                                      _mm256_madd_epi16(_mm256_maddubs_epi16(ahi, ahi), ones));
        __m256 level = nlev <= 32 ? _mm256_castsi256_ps(lookup(c->levels, nlev < 8 ? 8 : nlev, codes[u]))
                                  : _mm256_i32gather_ps(c->levels, codes[u], 4);  /* b >= 6: not a preset */
        __m256 gain = _mm256_mul_ps(_mm256_set1_ps(scale), level);
        s[u] = _mm256_div_ps(gain, _mm256_sqrt_ps(_mm256_cvtepi32_ps(sq)));
    }
}

/* The eight groups' points in row order: four registers of two groups (16 int8) each. */
TARGET INLINE void interleave(__m256i lo, __m256i hi, __m128i out[4])
{
    __m256i a = _mm256_unpacklo_epi32(lo, hi), b = _mm256_unpackhi_epi32(lo, hi);
    out[0] = _mm256_castsi256_si128(a);          /* groups 0, 1 */
    out[1] = _mm256_castsi256_si128(b);          /* groups 2, 3 */
    out[2] = _mm256_extracti128_si256(a, 1);     /* groups 4, 5 */
    out[3] = _mm256_extracti128_si256(b, 1);     /* groups 6, 7 */
}

TARGET INLINE __m256 group_weights(__m128i pair, int second, __m256 s, int g)
{
    __m128i bytes = second ? _mm_unpackhi_epi64(pair, pair) : pair;
    __m256 y = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
    return _mm256_mul_ps(y, _mm256_permutevar8x32_ps(s, _mm256_set1_epi32(g)));
}

/* The chunk at group g0 of a row of G groups, copied to a zero-padded buffer (72 bytes) near the
 * row's end: decode8 reads up to W + 32 bytes from a chunk's start (W <= 38 here). */
static inline const uint8_t *chunk(const uint8_t *row, int64_t g0, int64_t G, int W, uint8_t *buf)
{
    const uint8_t *p = row + g0 / 8 * W;
    if ((G - g0) * W / 8 >= (int64_t)W + 32) return p;
    memcpy(buf, p, W);
    return buf;
}

/* Runs the statements given (...) on the row's whole chunks, decoded two at a time, then the last one alone: with lo, hi and s
 * of chunk u (< U) at group g0 + 8 u.  The groups past the last whole chunk are the caller's. */
#define FOR_CHUNKS(c, row, G, scale, K, g0, ...) do {                                               \
        uint8_t buf_[2][72] = {{0}};                                                                \
        for (; g0 + 16 <= G; g0 += 16) { enum { U = 2 }; DECODED(c, row, G, scale, K, g0, __VA_ARGS__) }    \
        if (g0 + 8 <= G) { enum { U = 1 }; DECODED(c, row, G, scale, K, g0, __VA_ARGS__) g0 += 8; }        \
    } while (0)
#define DECODED(c, row, G, scale, K, g0, ...)                                                      \
    const uint8_t *p_[2];                                                                           \
    __m256i lo[2], hi[2];                                                                           \
    __m256 s[2];                                                                                    \
    EACH p_[u] = chunk(row, g0 + 8 * u, G, (c)->field_bits, buf_[u]);                              \
    decode8(c, U, p_, scale, K, lo, hi, s);                                                         \
    EACH { __VA_ARGS__ }

TARGET INLINE void dequantize_row(const pvq_codec *c, const uint8_t *row, float scale, int64_t n, float *out,
                                  const int K)
{
    const int64_t G = n / 8;
    int64_t g0 = 0;
    FOR_CHUNKS(c, row, G, scale, K, g0, {
        __m128i pairs[4];
        interleave(lo[u], hi[u], pairs);
        for (int g = 0; g < 8; g++)
            _mm256_storeu_ps(out + (g0 + 8 * u + g) * 8, group_weights(pairs[g / 2], g & 1, s[u], g));
    });
    pvq_dequantize_groups_ref(c, row, g0, G, scale, out);
}

TARGET INLINE float dot_row(const pvq_codec *c, const uint8_t *row, float scale, int64_t n, const float *x,
                            const int K)
{
    const int64_t G = n / 8;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t g0 = 0;
    FOR_CHUNKS(c, row, G, scale, K, g0, {
        __m128i pairs[4];
        interleave(lo[u], hi[u], pairs);
        const float *xg = x + (g0 + 8 * u) * 8;
        for (int g = 0; g < 8; g += 2) {
            acc0 = _mm256_fmadd_ps(group_weights(pairs[g / 2], 0, s[u], g), _mm256_loadu_ps(xg + g * 8), acc0);
            acc1 = _mm256_fmadd_ps(group_weights(pairs[g / 2], 1, s[u], g + 1),
                                   _mm256_loadu_ps(xg + g * 8 + 8), acc1);
        }
    });
    __m256 acc = _mm256_add_ps(acc0, acc1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h) + pvq_dot_groups_ref(c, row, g0, G, scale, x);
}

/* Decoded chunk by chunk: a chunk's eight groups are 32 bytes of each point plane and 8 scales, in place. */
TARGET INLINE void repack_row(const pvq_codec *c, const uint8_t *row, float scale, int64_t n, uint8_t *out,
                               const int K)
{
    const int64_t G = n / 8;
    if (G % 16) memset(out + (size_t)(G / 16) * PVQ_REPACKED_STEP_BYTES, 0, PVQ_REPACKED_STEP_BYTES);
    int64_t g0 = 0;
    FOR_CHUNKS(c, row, G, scale, K, g0, {
        const int64_t g = g0 + 8 * u;
        uint8_t *p = out + (size_t)(g / 16) * PVQ_REPACKED_STEP_BYTES + 4 * (g % 16);
        _mm256_storeu_si256((__m256i *)p, lo[u]);
        _mm256_storeu_si256((__m256i *)(p + 64), hi[u]);
        _mm256_storeu_ps((float *)(p + 128), s[u]);
    });
    pvq_repack_groups_ref(c, row, g0, G, scale, out);
}

/* pvq_quantize_x_q8 eight groups at a time, the same bytes: the same max, reciprocal and products, and
 * vcvtps2dq rounds to nearest even as lrintf does (default rounding mode).  Two packs put a group's
 * coordinates 0-3 in the low lane and 4-7 in the high lane; the lanes of two such registers are the planes. */
TARGET void pvq_quantize_x_q8_avx2(const float *x, int64_t n, int8_t *xq, float *xs)
{
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    int64_t s = 0;
    for (; s * 128 + 128 <= n; s++) {
        const float *xp = x + s * 128;
        __m256 m = _mm256_setzero_ps();
        for (int i = 0; i < 128; i += 8) m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(xp + i), abs_mask));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        float amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
        xs[s] = amax / 127.0f;
        const __m256 id = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
        for (int half = 0; half < 2; half++) { /* groups 0-7, then 8-15 */
            __m256i q[8];
            for (int g = 0; g < 8; g++)
                q[g] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xp + 64 * half + 8 * g), id));
            __m256i g0123 = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            __m256i g4567 = _mm256_packs_epi16(_mm256_packs_epi32(q[4], q[5]), _mm256_packs_epi32(q[6], q[7]));
            int8_t *out = xq + s * 128 + 32 * half;
            _mm256_storeu_si256((__m256i *)out, _mm256_permute2x128_si256(g0123, g4567, 0x20));
            _mm256_storeu_si256((__m256i *)(out + 64), _mm256_permute2x128_si256(g0123, g4567, 0x31));
        }
    }
    if (s * 128 < n) pvq_quantize_x_q8(x + s * 128, n - s * 128, xq + s * 128, xs + s);
}

/* Integer dot with Q8 activations (pvq_quantize_x_q8): chunk c of step s meets the 32 bytes at
 * xq + 128 s + 32 c of each half plane; y . x = |y| . (sign(y) x) in vpmaddubsw (|y|, |x| <= 127:
 * pair sums stay below 2^15). */
TARGET INLINE float dot_row_q8(const pvq_codec *c, const uint8_t *row, float scale, int64_t n,
                               const int8_t *xq, const float *xs, const int K)
{
    const int64_t G = n / 8;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    int64_t g0 = 0;
    FOR_CHUNKS(c, row, G, scale, K, g0, {
        const int64_t g = g0 + 8 * u;
        const int8_t *xp = xq + g / 16 * 128 + (g % 16) * 4;
        __m256i xlo = _mm256_loadu_si256((const __m256i *)xp), xhi = _mm256_loadu_si256((const __m256i *)(xp + 64));
        __m256i d = _mm256_add_epi32(
            _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(lo[u]), _mm256_sign_epi8(xlo, lo[u])), ones),
            _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(hi[u]), _mm256_sign_epi8(xhi, hi[u])), ones));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_mul_ps(s[u], _mm256_set1_ps(xs[g / 16])), acc);
    });
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h) + pvq_dot_groups_q8_ref(c, row, g0, G, scale, xq, xs);
}

/* The kernels of the header: the scalar ones where the closed form does not apply, else the bodies above
 * with K a constant where it is a preset's. */
TARGET void pvq_dequantize_row_avx2(const pvq_codec *c, const uint8_t *row, float scale, int64_t n, float *out)
{
    if (!pvq_closed_form(c)) pvq_dequantize_row_scalar(c, row, scale, n, out);
    else BY_K(c, dequantize_row(c, row, scale, n, out, K));
}

TARGET float pvq_dot_row_avx2(const pvq_codec *c, const uint8_t *row, float scale, int64_t n, const float *x)
{
    float r = 0.0f;
    if (!pvq_closed_form(c)) return pvq_dot_row_scalar(c, row, scale, n, x);
    BY_K(c, r = dot_row(c, row, scale, n, x, K));
    return r;
}

TARGET void pvq_repack_row_avx2(const pvq_codec *c, const uint8_t *row, float scale, int64_t n, uint8_t *out)
{
    if (!pvq_closed_form(c)) pvq_repack_row(c, row, scale, n, out);
    else BY_K(c, repack_row(c, row, scale, n, out, K));
}

TARGET float pvq_dot_row_q8_avx2(const pvq_codec *c, const uint8_t *row, float scale, int64_t n,
                                 const int8_t *xq, const float *xs)
{
    float r = 0.0f;
    if (!pvq_closed_form(c)) return pvq_dot_row_q8_scalar(c, row, scale, n, xq, xs);
    BY_K(c, r = dot_row_q8(c, row, scale, n, xq, xs, K));
    return r;
}

void pvq_matvec_q8_avx2(const pvq_codec *c, const uint8_t *data, const uint16_t *scales_f16, int64_t rows,
                        int64_t n, const int8_t *xq, const float *xs, float *y)
{
    pvq_matvec_q8_by_rows(pvq_dot_row_q8_avx2, c, data, scales_f16, rows, n, xq, xs, y);
}
