/* The repacked D == 8 layout (pvq_codec.h): the conversion from PVQ rows, the scalar reference dot and the
 * AVX2 dot.  Each step of 16 groups is 128 point bytes that meet the 128 activation bytes of the same step
 * (same planes), then 16 float scales. */
#include "pvq_codec.h"

#include <immintrin.h>
#include <string.h>

#define STEP_BYTES (128 + 16 * 4)

size_t pvq_repacked_row_bytes(int64_t n)
{
    return (size_t)((n / 8 + 15) / 16) * STEP_BYTES;
}

void pvq_repack_row(const pvq_codec *c, const uint8_t *row, float scale, int64_t n, uint8_t *out)
{
    const int64_t G = n / 8;
    memset(out, 0, pvq_repacked_row_bytes(n));
    int32_t y[8];
    for (int64_t g = 0; g < G; g++) {
        uint8_t *step = out + (size_t)(g / 16) * STEP_BYTES;
        float s = pvq_group_ref(c, row, g, scale, y);
        for (int i = 0; i < 8; i++) step[64 * (i / 4) + 4 * (g % 16) + i % 4] = (uint8_t)(int8_t)y[i];
        memcpy(step + 128 + 4 * (g % 16), &s, 4);
    }
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

/* Eight groups per register as pvq_dot_row_q8_avx2 does after decoding: |y| . (sign(y) x) in vpmaddubsw. */
__attribute__((target("avx2,fma"))) float pvq_dot_repacked_avx2(const uint8_t *prow, int64_t n, const int8_t *xq,
                                                                 const float *xs)
{
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t st = 0; st < (n / 8 + 15) / 16; st++) {
        const uint8_t *pt = prow + (size_t)st * STEP_BYTES;
        const int8_t *xp = xq + st * 128;
        const __m256 xsv = _mm256_set1_ps(xs[st]);
        for (int half = 0; half < 2; half++) { /* groups 0-7, then 8-15 */
            __m256i lo = _mm256_loadu_si256((const __m256i *)(pt + 32 * half));
            __m256i hi = _mm256_loadu_si256((const __m256i *)(pt + 64 + 32 * half));
            __m256i xlo = _mm256_loadu_si256((const __m256i *)(xp + 32 * half));
            __m256i xhi = _mm256_loadu_si256((const __m256i *)(xp + 64 + 32 * half));
            __m256i d = _mm256_add_epi32(
                _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(lo), _mm256_sign_epi8(xlo, lo)), ones),
                _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(hi), _mm256_sign_epi8(xhi, hi)), ones));
            __m256 s = _mm256_loadu_ps((const float *)(pt + 128 + 32 * half));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_mul_ps(s, xsv), acc);
        }
    }
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}
