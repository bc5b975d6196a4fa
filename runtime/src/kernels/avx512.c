/* AVX-512 F16 dots in the two sum orders llama.cpp's CPU backend uses on AVX-512 machines, so F16
 * logits agree with it closely: for batches (its tinyBLAS) one 16-lane accumulator over the row and
 * _mm512_reduce_add_ps; for single rows (ggml_vec_dot_f16) four accumulators taking 64 elements per
 * step, added pairwise, then reduced. */
#include "../types.h"

#if defined(__AVX512F__)
#include <immintrin.h>

void dot_f16_avx512(int64_t n, const void *w, const void *x, float *out) {
    const uint16_t *a = w, *b = x;
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        acc = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(a + i))),
                              _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(b + i))), acc);
    float s = _mm512_reduce_add_ps(acc);
    for (; i < n; i++) s += fp16_to_f32(a[i]) * fp16_to_f32(b[i]);
    *out = s;
}

void dot_f16_avx512x4(int64_t n, const void *w, const void *x, float *out) {
    const uint16_t *a = w, *b = x;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t i = 0;
    for (; i + 64 <= n; i += 64)
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++)
            acc[j] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(a + i + 16 * j))),
                                     _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(b + i + 16 * j))), acc[j]);
    acc[0] = _mm512_add_ps(acc[0], acc[2]);
    acc[1] = _mm512_add_ps(acc[1], acc[3]);
    acc[0] = _mm512_add_ps(acc[0], acc[1]);
    double s = _mm512_reduce_add_ps(acc[0]);
    for (; i < n; i++) s += fp16_to_f32(a[i]) * fp16_to_f32(b[i]);
    *out = (float)s;
}

/* 2 weight rows x 4 activation rows of dot_f16_avx512 at once (8 independent accumulators, the same
 * sums): out[t * out_stride + r]. */
void tile_f16_avx512(int64_t n, const void *w, size_t w_stride, const void *x, size_t x_stride, float *out,
                     size_t out_stride) {
    __m512 acc[2][4];     /* in registers only if every loop over r and t is unrolled (GCC -O2 does not by itself) */
#pragma GCC unroll 2
    for (int r = 0; r < 2; r++)
#pragma GCC unroll 4
        for (int t = 0; t < 4; t++) acc[r][t] = _mm512_setzero_ps();
    const uint8_t *wb = w, *xb = x;
    for (int64_t i = 0; i + 16 <= n; i += 16) {
        __m512 wv[2], xv;
#pragma GCC unroll 2
        for (int r = 0; r < 2; r++)
            wv[r] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)(wb + r * w_stride) + i)));
#pragma GCC unroll 4
        for (int t = 0; t < 4; t++) {
            xv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)(xb + t * x_stride) + i)));
#pragma GCC unroll 2
            for (int r = 0; r < 2; r++) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
#pragma GCC unroll 2
    for (int r = 0; r < 2; r++)
#pragma GCC unroll 4
        for (int t = 0; t < 4; t++) out[t * out_stride + r] = _mm512_reduce_add_ps(acc[r][t]);
}
#endif
