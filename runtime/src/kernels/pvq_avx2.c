/* AVX2 kernels of the PVQ type for D == 8 (codec->fast): eight groups per step, one per 32-bit lane.
 *
 * Per step: the eight W-bit fields (one W-byte chunk of the row) are read with one vpshufb and a
 * variable shift (fields of up to 32 bits after their offset) or scalar loads (wider ones); the
 * split k1 of each index into halves of 4 is a count of cumulative thresholds below it; the
 * remainder splits by one division (a float reciprocal product, exact after one correction since
 * quotients stay below 2^16); the halves are two gathers from the table of 4-dim points (int8 x 4);
 * ||y||^2 comes from the bytes with maddubs/madd.  Results equal pvq_ref.c's: dequantize is
 * bit-identical (same float operations), dot differs only by summation order. */
#include "pvq_codec.h"

#include <immintrin.h>
#include <string.h>

#define TARGET __attribute__((target("avx2,fma")))
#define INLINE static inline __attribute__((always_inline))

/* t[k] for each lane; t has ntab entries (a multiple of 16), lanes k < ntab. */
TARGET INLINE __m256i lookup(const uint32_t *t, int ntab, __m256i k)
{
    __m256i r = _mm256_permutevar8x32_epi32(_mm256_loadu_si256((const __m256i *)t), k);
    for (int v = 8; v < ntab; v += 8) {
        __m256i p = _mm256_permutevar8x32_epi32(_mm256_loadu_si256((const __m256i *)(t + v)), k);
        r = _mm256_blendv_epi8(r, p, _mm256_cmpgt_epi32(k, _mm256_set1_epi32(v - 1)));
    }
    return r;
}

/* Decodes the eight groups of one chunk (W bytes at p, readable up to p + max(W + 8, 32)): points as int8
 * (lo: coordinates 0-3, hi: 4-7, one group per lane) and the per-group weight scale s. */
TARGET INLINE void decode8(const pvq_codec *c, const uint8_t *p, float scale,
                                  __m256i *lo, __m256i *hi, __m256 *s)
{
    const pvq_fast8 *f = c->fast;
    const int W = c->field_bits, b = c->gain_bits;
    __m256i r, codes;
    if (f->avx2_narrow) {
        __m256i bytes = _mm256_set_m128i(_mm_loadu_si128((const __m128i *)(p + f->avx2_base1)),
                                         _mm_loadu_si128((const __m128i *)p));
        __m256i v = _mm256_shuffle_epi8(bytes, _mm256_loadu_si256((const __m256i *)f->avx2_shuf));
        v = _mm256_srlv_epi32(v, _mm256_loadu_si256((const __m256i *)f->avx2_shift));
        v = _mm256_and_si256(v, _mm256_set1_epi32((int)(0xFFFFFFFFu >> (32 - W))));
        r = _mm256_srli_epi32(v, b);
        codes = _mm256_and_si256(v, _mm256_set1_epi32((1 << b) - 1));
    } else {
        const uint64_t mask = (UINT64_C(1) << W) - 1;
        uint32_t idx[8], code[8];
        for (int j = 0; j < 8; j++) {
            uint64_t v;
            memcpy(&v, p + ((j * W) >> 3), 8);
            v = (v >> ((j * W) & 7)) & mask;
            idx[j] = (uint32_t)(v >> b);
            code[j] = (uint32_t)v & ((1u << b) - 1);
        }
        r = _mm256_loadu_si256((const __m256i *)idx);
        codes = _mm256_loadu_si256((const __m256i *)code);
    }
    __m256i below = _mm256_setzero_si256();           /* minus the thresholds above the index */
    for (int j = 1; j <= c->K; j++)
        below = _mm256_add_epi32(below, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)f->cum[j]), r));
    __m256i k1 = _mm256_add_epi32(_mm256_set1_epi32(c->K), below);

    r = _mm256_sub_epi32(r, lookup(f->cum, f->ntab, k1));
    __m256i n2 = lookup(f->n2, f->ntab, k1);
    __m256 inv = _mm256_castsi256_ps(lookup((const uint32_t *)f->inv_n2, f->ntab, k1));
    __m256i q, rem;
    if (f->exact_div) {              /* see pvq_fast8.exact_div: no correction needed */
        q = _mm256_cvttps_epi32(_mm256_fmadd_ps(_mm256_cvtepi32_ps(r), inv, _mm256_mul_ps(inv, _mm256_set1_ps(0.5f))));
        rem = _mm256_sub_epi32(r, _mm256_mullo_epi32(q, n2));
    } else {
        q = _mm256_cvttps_epi32(_mm256_mul_ps(_mm256_cvtepi32_ps(r), inv));
        rem = _mm256_sub_epi32(r, _mm256_mullo_epi32(q, n2));
        __m256i neg = _mm256_cmpgt_epi32(_mm256_setzero_si256(), rem);
        q = _mm256_add_epi32(q, neg);
        rem = _mm256_add_epi32(rem, _mm256_and_si256(neg, n2));
        __m256i over = _mm256_cmpgt_epi32(rem, _mm256_sub_epi32(n2, _mm256_set1_epi32(1)));
        q = _mm256_sub_epi32(q, over);
        rem = _mm256_sub_epi32(rem, _mm256_and_si256(over, n2));
    }

    const int *lut = (const int *)f->lut4;
    *lo = _mm256_i32gather_epi32(lut, _mm256_add_epi32(lookup(f->base_lo, f->ntab, k1), q), 4);
    *hi = _mm256_i32gather_epi32(lut, _mm256_add_epi32(lookup(f->base_hi, f->ntab, k1), rem), 4);

    const __m256i ones = _mm256_set1_epi16(1);
    __m256i alo = _mm256_abs_epi8(*lo), ahi = _mm256_abs_epi8(*hi);     /* |y| <= 127 */
    __m256i sq = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(alo, alo), ones),
                                  _mm256_madd_epi16(_mm256_maddubs_epi16(ahi, ahi), ones));
    __m256 level = c->gain_bits <= 3 ? _mm256_permutevar8x32_ps(_mm256_loadu_ps(c->levels), codes)
                                     : _mm256_i32gather_ps(c->levels, codes, 4);
    __m256 gain = _mm256_mul_ps(_mm256_set1_ps(scale), level);
    *s = _mm256_div_ps(gain, _mm256_sqrt_ps(_mm256_cvtepi32_ps(sq)));
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
 * row's end: decode8 reads up to 32 bytes (vector) or W + 8 bytes (scalar) from a chunk's start. */
static inline const uint8_t *chunk(const uint8_t *row, int64_t g0, int64_t G, int W, uint8_t *buf)
{
    const uint8_t *p = row + g0 / 8 * W;
    if ((G - g0) * W / 8 >= (int64_t)W + 32) return p;
    memcpy(buf, p, W);
    return buf;
}

TARGET void pvq_dequantize_row_avx2(const pvq_codec *c, const uint8_t *row, float scale, int64_t n,
                                    float *out)
{
    if (!c->fast) {
        pvq_dequantize_row_ref(c, row, scale, n, out);
        return;
    }
    const int64_t G = n / 8;
    uint8_t buf[72] = {0};
    int64_t g0 = 0;
    for (; g0 + 8 <= G; g0 += 8) {
        __m256i lo, hi;
        __m256 s;
        __m128i pairs[4];
        decode8(c, chunk(row, g0, G, c->field_bits, buf), scale, &lo, &hi, &s);
        interleave(lo, hi, pairs);
        for (int g = 0; g < 8; g++)
            _mm256_storeu_ps(out + (g0 + g) * 8, group_weights(pairs[g / 2], g & 1, s, g));
    }
    pvq_dequantize_groups_ref(c, row, g0, G, scale, out);
}

TARGET float pvq_dot_row_avx2(const pvq_codec *c, const uint8_t *row, float scale, int64_t n,
                              const float *x)
{
    if (!c->fast) return pvq_dot_row_ref(c, row, scale, n, x);
    const int64_t G = n / 8;
    uint8_t buf[72] = {0};
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t g0 = 0;
    for (; g0 + 8 <= G; g0 += 8) {
        __m256i lo, hi;
        __m256 s;
        __m128i pairs[4];
        decode8(c, chunk(row, g0, G, c->field_bits, buf), scale, &lo, &hi, &s);
        interleave(lo, hi, pairs);
        const float *xg = x + g0 * 8;
        for (int g = 0; g < 8; g += 2) {
            acc0 = _mm256_fmadd_ps(group_weights(pairs[g / 2], 0, s, g), _mm256_loadu_ps(xg + g * 8), acc0);
            acc1 = _mm256_fmadd_ps(group_weights(pairs[g / 2], 1, s, g + 1),
                                   _mm256_loadu_ps(xg + g * 8 + 8), acc1);
        }
    }
    __m256 acc = _mm256_add_ps(acc0, acc1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h) + pvq_dot_groups_ref(c, row, g0, G, scale, x);
}

/* Decoded chunk by chunk: a chunk's eight groups are 32 bytes of each point plane and 8 scales, in place. */
TARGET void pvq_repack_row_avx2(const pvq_codec *c, const uint8_t *row, float scale, int64_t n, uint8_t *out)
{
    if (!c->fast) {
        pvq_repack_row(c, row, scale, n, out);
        return;
    }
    const int64_t G = n / 8;
    if (G % 16) memset(out + (size_t)(G / 16) * PVQ_REPACKED_STEP_BYTES, 0, PVQ_REPACKED_STEP_BYTES);
    uint8_t buf[72] = {0};
    int64_t g0 = 0;
    for (; g0 + 8 <= G; g0 += 8) {
        __m256i lo, hi;
        __m256 s;
        decode8(c, chunk(row, g0, G, c->field_bits, buf), scale, &lo, &hi, &s);
        uint8_t *p = out + (size_t)(g0 / 16) * PVQ_REPACKED_STEP_BYTES + 4 * (g0 % 16);
        _mm256_storeu_si256((__m256i *)p, lo);
        _mm256_storeu_si256((__m256i *)(p + 64), hi);
        _mm256_storeu_ps((float *)(p + 128), s);
    }
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
TARGET float pvq_dot_row_q8_avx2(const pvq_codec *c, const uint8_t *row, float scale, int64_t n,
                                 const int8_t *xq, const float *xs)
{
    if (!c->fast) return pvq_dot_row_q8_ref(c, row, scale, n, xq, xs);
    const int64_t G = n / 8;
    const __m256i ones = _mm256_set1_epi16(1);
    uint8_t buf[72] = {0};
    __m256 acc = _mm256_setzero_ps();
    int64_t g0 = 0;
    for (; g0 + 8 <= G; g0 += 8) {
        __m256i lo, hi;
        __m256 s;
        decode8(c, chunk(row, g0, G, c->field_bits, buf), scale, &lo, &hi, &s);
        const int8_t *xp = xq + g0 / 16 * 128 + (g0 % 16) * 4;
        __m256i xlo = _mm256_loadu_si256((const __m256i *)xp), xhi = _mm256_loadu_si256((const __m256i *)(xp + 64));
        __m256i d = _mm256_add_epi32(
            _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(lo), _mm256_sign_epi8(xlo, lo)), ones),
            _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(hi), _mm256_sign_epi8(xhi, hi)), ones));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_mul_ps(s, _mm256_set1_ps(xs[g0 / 16])), acc);
    }
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h) + pvq_dot_groups_q8_ref(c, row, g0, G, scale, xq, xs);
}

void pvq_matvec_q8_avx2(const pvq_codec *c, const uint8_t *data, const uint16_t *scales_f16, int64_t rows,
                        int64_t n, const int8_t *xq, const float *xs, float *y)
{
    pvq_matvec_q8_by_rows(pvq_dot_row_q8_avx2, c, data, scales_f16, rows, n, xq, xs, y);
}
