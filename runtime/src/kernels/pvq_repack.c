/* The repacked D == 8 layout (pvq_codec.h): the conversion from PVQ rows, the scalar reference dot and tile,
 * the AVX2 dot and tile, and the AVX-512 VNNI tile.  Each step of 16 groups is 128 point bytes that meet the 128 activation bytes
 * of the same step (same planes), then 16 float scales. */
#include "pvq_codec.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define STEP_BYTES PVQ_REPACKED_STEP_BYTES
#define TARGET __attribute__((target("avx2,fma")))
#define TARGET512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")))
#define UNROLL _Pragma("GCC unroll 8")

size_t pvq_repacked_row_bytes(int64_t n)
{
    return (size_t)((n / 8 + 15) / 16) * STEP_BYTES;
}

void pvq_repack_groups_ref(const pvq_codec *c, const uint8_t *row, int64_t g0, int64_t g1, float scale, uint8_t *out)
{
    int32_t y[8];
    for (int64_t g = g0; g < g1; g++) {
        uint8_t *step = out + (size_t)(g / 16) * STEP_BYTES;
        float s = pvq_group_ref(c, row, g, scale, y);
        for (int i = 0; i < 8; i++) step[64 * (i / 4) + 4 * (g % 16) + i % 4] = (uint8_t)(int8_t)y[i];
        memcpy(step + 128 + 4 * (g % 16), &s, 4);
    }
}

void pvq_repack_row(const pvq_codec *c, const uint8_t *row, float scale, int64_t n, uint8_t *out)
{
    memset(out, 0, pvq_repacked_row_bytes(n));
    pvq_repack_groups_ref(c, row, 0, n / 8, scale, out);
}

/* Group g's integer dot with the step's activations and its scale s, from the repacked row. */
static int32_t group_dot(const uint8_t *prow, int64_t g, const int8_t *xq, float *s)
{
    const int8_t *pt = (const int8_t *)(prow + (size_t)(g / 16) * STEP_BYTES);
    const int8_t *x = xq + g / 16 * 128;
    int gl = (int)(g % 16);
    int32_t d = 0;
    for (int i = 0; i < 8; i++) d += pt[64 * (i / 4) + 4 * gl + i % 4] * x[64 * (i / 4) + 4 * gl + i % 4];
    memcpy(s, pt + 128 + 4 * gl, 4);
    return d;
}

/* Groups [g0, g1) one after the other from 0, as pvq_dot_groups_q8_ref adds them. */
static float dot_repacked_groups(const uint8_t *prow, int64_t g0, int64_t g1, const int8_t *xq, const float *xs)
{
    float acc = 0.0f, s;
    for (int64_t g = g0; g < g1; g++) {
        int32_t d = group_dot(prow, g, xq, &s);
        acc += s * xs[g / 16] * (float)d;
    }
    return acc;
}

/* The float order of pvq_dot_row_q8_ref (pvq_codec.h). */
float pvq_dot_repacked_ref(const uint8_t *prow, int64_t n, const int8_t *xq, const float *xs)
{
    const int64_t G = n / 8, whole = G / 8 * 8;
    float lane[8] = {0}, s;
    for (int64_t g = 0; g < whole; g++) {
        int32_t d = group_dot(prow, g, xq, &s);
        lane[g % 8] = fmaf((float)d, s * xs[g / 16], lane[g % 8]);
    }
    return pvq_sum_lanes8(lane) + dot_repacked_groups(prow, whole, G, xq, xs);
}

void pvq_tile_repacked_ref(const uint8_t *prow, size_t prow_stride, int64_t n, const int8_t *xq, const float *xs,
                           size_t x_stride, float *out, size_t out_stride)
{
    for (int r = 0; r < PVQ_TILE_R; r++)
        for (int t = 0; t < PVQ_TILE_T; t++)
            out[t * out_stride + r] = pvq_dot_repacked_ref(prow + r * prow_stride, n,
                                                           (const int8_t *)((const uint8_t *)xq + t * x_stride),
                                                           (const float *)((const uint8_t *)xs + t * x_stride));
}

/* The sum of the eight lanes, in the order pvq_dot_row_q8_avx2 takes, so that the repacked products equal
 * the native decoder's bit for bit. */
TARGET static inline float hsum8(__m256 acc)
{
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

/* The eight group dots of one half-step (groups 0-7 or 8-15): |y| . (sign(y) x) in vpmaddubsw, the two
 * planes added in int16, then pairs summed to int32.  No saturation: a lane of either stage sums
 * |y_i| |x_i| over coordinates of one group, at most K * 127 <= 127 * 127 (fast-path codecs). */
TARGET static inline __m256i group_dots(__m256i alo, __m256i ahi, __m256i lo, __m256i hi, const int8_t *xp)
{
    __m256i xlo = _mm256_loadu_si256((const __m256i *)xp), xhi = _mm256_loadu_si256((const __m256i *)(xp + 64));
    __m256i d16 = _mm256_add_epi16(_mm256_maddubs_epi16(alo, _mm256_sign_epi8(xlo, lo)),
                                   _mm256_maddubs_epi16(ahi, _mm256_sign_epi8(xhi, hi)));
    return _mm256_madd_epi16(d16, _mm256_set1_epi16(1));
}

/* Eight groups per register as pvq_dot_row_q8_avx2 does after decoding: chunk c is half c % 2 of step c / 2. */
TARGET float pvq_dot_repacked_avx2(const uint8_t *prow, int64_t n, const int8_t *xq, const float *xs)
{
    const int64_t G = n / 8;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t ch = 0; ch < G / 8; ch++) {
        const int64_t st = ch / 2, half = ch % 2;
        const uint8_t *pt = prow + (size_t)st * STEP_BYTES;
        __m256i lo = _mm256_loadu_si256((const __m256i *)(pt + 32 * half));
        __m256i hi = _mm256_loadu_si256((const __m256i *)(pt + 64 + 32 * half));
        __m256i d = group_dots(_mm256_abs_epi8(lo), _mm256_abs_epi8(hi), lo, hi, xq + st * 128 + 32 * half);
        __m256 s = _mm256_loadu_ps((const float *)(pt + 128 + 32 * half));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_mul_ps(s, _mm256_set1_ps(xs[st])), acc);
    }
    return hsum8(acc) + dot_repacked_groups(prow, G / 8 * 8, G, xq, xs);
}

/* The tile takes x as unsigned bytes, x + 128 (a sign-bit flip per token, shared by the rows), so that
 * vpmaddubsw multiplies it by the signed points directly: no vpsignb per (row, token).  The excess,
 * 128 sum(y) per int16 lane, depends on the row only and is subtracted in int16.  No saturation: a lane
 * sums (x_i + 128) y_i over coordinates of one group, at most 255 K <= 255 * 127 in magnitude, and the
 * difference is the exact x . y of group_dots. */
/* One chunk of 8 groups (half `half` of step st) of the tile into acc. */
TARGET static inline __attribute__((always_inline)) void tile_chunk(const uint8_t *prow, size_t prow_stride,
                                                                   const int8_t *xq, const float *xs, size_t x_stride,
                                                                   int64_t st, int half, __m256 acc[PVQ_TILE_R][PVQ_TILE_T])
{
    const __m256i ones = _mm256_set1_epi16(1), k128 = _mm256_set1_epi8((char)0x80);
    __m256i lo[PVQ_TILE_R], hi[PVQ_TILE_R], excess[PVQ_TILE_R];
    __m256 s[PVQ_TILE_R];
    UNROLL for (int r = 0; r < PVQ_TILE_R; r++) {
        const uint8_t *pt = prow + r * prow_stride + (size_t)st * STEP_BYTES + 32 * half;
        lo[r] = _mm256_loadu_si256((const __m256i *)pt);
        hi[r] = _mm256_loadu_si256((const __m256i *)(pt + 64));
        excess[r] = _mm256_add_epi16(_mm256_maddubs_epi16(k128, lo[r]), _mm256_maddubs_epi16(k128, hi[r]));
        s[r] = _mm256_loadu_ps((const float *)(pt + 128));
    }
    UNROLL for (int t = 0; t < PVQ_TILE_T; t++) {
        const int8_t *xp = (const int8_t *)((const uint8_t *)xq + t * x_stride) + st * 128 + 32 * half;
        const __m256i ulo = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)xp), k128);
        const __m256i uhi = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(xp + 64)), k128);
        const __m256 xsv = _mm256_set1_ps(((const float *)((const uint8_t *)xs + t * x_stride))[st]);
        UNROLL for (int r = 0; r < PVQ_TILE_R; r++) {
            __m256i d16 = _mm256_sub_epi16(
                _mm256_add_epi16(_mm256_maddubs_epi16(ulo, lo[r]), _mm256_maddubs_epi16(uhi, hi[r])), excess[r]);
            __m256i d = _mm256_madd_epi16(d16, ones);
            acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_mul_ps(s[r], xsv), acc[r][t]);
        }
    }
}

/* A tile's last, odd chunk of 8 (half a step), its lanes summed, and the groups past the last chunk. */
TARGET static inline __attribute__((always_inline)) void tile_finish(const uint8_t *prow, size_t prow_stride, int64_t n,
                                                                    const int8_t *xq, const float *xs, size_t x_stride,
                                                                    __m256 acc[PVQ_TILE_R][PVQ_TILE_T], float *out,
                                                                    size_t out_stride)
{
    const int64_t G = n / 8, chunks = G / 8;
    if (chunks % 2) tile_chunk(prow, prow_stride, xq, xs, x_stride, chunks / 2, 0, acc);
    UNROLL for (int r = 0; r < PVQ_TILE_R; r++)
        UNROLL for (int t = 0; t < PVQ_TILE_T; t++)
            out[t * out_stride + r] = hsum8(acc[r][t]) +
                dot_repacked_groups(prow + r * prow_stride, G / 8 * 8, G, (const int8_t *)((const uint8_t *)xq + t * x_stride),
                                    (const float *)((const uint8_t *)xs + t * x_stride));
}

TARGET void pvq_tile_repacked_avx2(const uint8_t *prow, size_t prow_stride, int64_t n, const int8_t *xq,
                                   const float *xs, size_t x_stride, float *out, size_t out_stride)
{
    __m256 acc[PVQ_TILE_R][PVQ_TILE_T];
    UNROLL for (int r = 0; r < PVQ_TILE_R; r++)
        UNROLL for (int t = 0; t < PVQ_TILE_T; t++) acc[r][t] = _mm256_setzero_ps();
    const int64_t G = n / 8, chunks = G / 8;
    for (int64_t st = 0; st < chunks / 2; st++) {
        tile_chunk(prow, prow_stride, xq, xs, x_stride, st, 0, acc);
        tile_chunk(prow, prow_stride, xq, xs, x_stride, st, 1, acc);
    }
    tile_finish(prow, prow_stride, n, xq, xs, x_stride, acc, out, out_stride);
}

/* The same tile with AVX-512 VNNI: a whole step of 16 groups per (row, token) in two vpdpbusd of the
 * unsigned x + 128 by the signed points, the row's excess 128 sum(y) subtracted in int32, and the two
 * chunks of the step added to the eight lanes in turn, as pvq_tile_repacked_avx2 adds them: the same
 * integer dots and float operations, so the same results bit for bit. */
TARGET512 void pvq_tile_repacked_avx512(const uint8_t *prow, size_t prow_stride, int64_t n, const int8_t *xq,
                                        const float *xs, size_t x_stride, float *out, size_t out_stride)
{
    const __m512i k128 = _mm512_set1_epi8((char)0x80), zero = _mm512_setzero_si512();
    __m256 acc[PVQ_TILE_R][PVQ_TILE_T];
    UNROLL for (int r = 0; r < PVQ_TILE_R; r++)
        UNROLL for (int t = 0; t < PVQ_TILE_T; t++) acc[r][t] = _mm256_setzero_ps();
    const int64_t G = n / 8, chunks = G / 8;
    for (int64_t st = 0; st < chunks / 2; st++) {
        __m512i lo[PVQ_TILE_R], hi[PVQ_TILE_R], excess[PVQ_TILE_R];
        __m512 s[PVQ_TILE_R];
        UNROLL for (int r = 0; r < PVQ_TILE_R; r++) {
            const uint8_t *pt = prow + r * prow_stride + (size_t)st * STEP_BYTES;
            lo[r] = _mm512_loadu_si512(pt);
            hi[r] = _mm512_loadu_si512(pt + 64);
            excess[r] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, k128, lo[r]), k128, hi[r]);
            s[r] = _mm512_loadu_ps(pt + 128);
        }
        UNROLL for (int t = 0; t < PVQ_TILE_T; t++) {
            const int8_t *xp = (const int8_t *)((const uint8_t *)xq + t * x_stride) + st * 128;
            const __m512i ulo = _mm512_xor_si512(_mm512_loadu_si512(xp), k128);
            const __m512i uhi = _mm512_xor_si512(_mm512_loadu_si512(xp + 64), k128);
            const __m512 xsv = _mm512_set1_ps(((const float *)((const uint8_t *)xs + t * x_stride))[st]);
            UNROLL for (int r = 0; r < PVQ_TILE_R; r++) {
                __m512i d = _mm512_sub_epi32(_mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, ulo, lo[r]), uhi, hi[r]),
                                             excess[r]);
                __m512 df = _mm512_cvtepi32_ps(d), m = _mm512_mul_ps(s[r], xsv);
                acc[r][t] = _mm256_fmadd_ps(_mm512_castps512_ps256(df), _mm512_castps512_ps256(m), acc[r][t]);
                acc[r][t] = _mm256_fmadd_ps(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(df), 1)),
                                            _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(m), 1)), acc[r][t]);
            }
        }
    }
    tile_finish(prow, prow_stride, n, xq, xs, x_stride, acc, out, out_stride);
}
