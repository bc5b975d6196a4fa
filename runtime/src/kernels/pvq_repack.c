/* The repacked D == 8 layout (pvq_codec.h): the conversion from PVQ rows, the scalar reference dot and tile,
 * and the AVX2 dot and tile.  Each step of 16 groups is 128 point bytes that meet the 128 activation bytes
 * of the same step (same planes), then 16 float scales. */
#include "pvq_codec.h"

#include <immintrin.h>
#include <string.h>

#define STEP_BYTES PVQ_REPACKED_STEP_BYTES
#define TARGET __attribute__((target("avx2,fma")))
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

float pvq_dot_repacked_ref(const uint8_t *prow, int64_t n, const int8_t *xq, const float *xs)
{
    float acc = 0.0f;
    for (int64_t st = 0; st < (n / 8 + 15) / 16; st++) {
        const int8_t *pt = (const int8_t *)(prow + (size_t)st * STEP_BYTES);
        for (int g = 0; g < 16; g++) {
            int32_t d = 0;
            for (int i = 0; i < 8; i++) d += pt[64 * (i / 4) + 4 * g + i % 4] * xq[st * 128 + 64 * (i / 4) + 4 * g + i % 4];
            float s;
            memcpy(&s, pt + 128 + 4 * g, 4);
            acc += s * xs[st] * (float)d;
        }
    }
    return acc;
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

/* Eight groups per register as pvq_dot_row_q8_avx2 does after decoding. */
TARGET float pvq_dot_repacked_avx2(const uint8_t *prow, int64_t n, const int8_t *xq, const float *xs)
{
    __m256 acc = _mm256_setzero_ps();
    for (int64_t st = 0; st < (n / 8 + 15) / 16; st++) {
        const uint8_t *pt = prow + (size_t)st * STEP_BYTES;
        const __m256 xsv = _mm256_set1_ps(xs[st]);
        for (int half = 0; half < 2; half++) { /* groups 0-7, then 8-15 */
            __m256i lo = _mm256_loadu_si256((const __m256i *)(pt + 32 * half));
            __m256i hi = _mm256_loadu_si256((const __m256i *)(pt + 64 + 32 * half));
            __m256i d = group_dots(_mm256_abs_epi8(lo), _mm256_abs_epi8(hi), lo, hi, xq + st * 128 + 32 * half);
            __m256 s = _mm256_loadu_ps((const float *)(pt + 128 + 32 * half));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_mul_ps(s, xsv), acc);
        }
    }
    return hsum8(acc);
}

TARGET void pvq_tile_repacked_avx2(const uint8_t *prow, size_t prow_stride, int64_t n, const int8_t *xq,
                                   const float *xs, size_t x_stride, float *out, size_t out_stride)
{
    __m256 acc[PVQ_TILE_R][PVQ_TILE_T];
    UNROLL for (int r = 0; r < PVQ_TILE_R; r++)
        UNROLL for (int t = 0; t < PVQ_TILE_T; t++) acc[r][t] = _mm256_setzero_ps();
    for (int64_t st = 0; st < (n / 8 + 15) / 16; st++) {
        UNROLL for (int half = 0; half < 2; half++) {
            __m256i lo[PVQ_TILE_R], hi[PVQ_TILE_R], alo[PVQ_TILE_R], ahi[PVQ_TILE_R];
            __m256 s[PVQ_TILE_R];
            UNROLL for (int r = 0; r < PVQ_TILE_R; r++) {
                const uint8_t *pt = prow + r * prow_stride + (size_t)st * STEP_BYTES + 32 * half;
                lo[r] = _mm256_loadu_si256((const __m256i *)pt);
                hi[r] = _mm256_loadu_si256((const __m256i *)(pt + 64));
                alo[r] = _mm256_abs_epi8(lo[r]);
                ahi[r] = _mm256_abs_epi8(hi[r]);
                s[r] = _mm256_loadu_ps((const float *)(pt + 128));
            }
            UNROLL for (int t = 0; t < PVQ_TILE_T; t++) {
                const int8_t *xp = (const int8_t *)((const uint8_t *)xq + t * x_stride) + st * 128 + 32 * half;
                const __m256 xsv = _mm256_set1_ps(((const float *)((const uint8_t *)xs + t * x_stride))[st]);
                UNROLL for (int r = 0; r < PVQ_TILE_R; r++) {
                    __m256i d = group_dots(alo[r], ahi[r], lo[r], hi[r], xp);
                    acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_mul_ps(s[r], xsv), acc[r][t]);
                }
            }
        }
    }
    UNROLL for (int r = 0; r < PVQ_TILE_R; r++)
        UNROLL for (int t = 0; t < PVQ_TILE_T; t++) out[t * out_stride + r] = hsum8(acc[r][t]);
}
