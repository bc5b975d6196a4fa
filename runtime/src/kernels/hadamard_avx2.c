/* AVX2 version of the online Hadamard transform: the same float operations as hadamard_ref, per
 * element and in the same order, eight elements per instruction. Butterflies of stride 1, 2, 4 stay
 * inside a register (a permute gives the partner, a blend keeps u + v in the low and u - v in the high
 * lanes); wider strides pair whole registers. B mixes eight columns at a time. Plans with p < 8 (rare)
 * run the reference. */
#include "hadamard.h"

#if defined(__AVX2__)
#include <immintrin.h>

static void butterflies(float *blk, int p) {
    for (int i = 0; i < p; i += 8) {
        __m256 x = _mm256_loadu_ps(blk + i), t;
        t = _mm256_permute_ps(x, 0xB1);                        /* stride 1: partner of lane i is i ^ 1 */
        x = _mm256_blend_ps(_mm256_add_ps(x, t), _mm256_sub_ps(t, x), 0xAA);
        t = _mm256_permute_ps(x, 0x4E);                        /* stride 2: i ^ 2 */
        x = _mm256_blend_ps(_mm256_add_ps(x, t), _mm256_sub_ps(t, x), 0xCC);
        t = _mm256_permute2f128_ps(x, x, 0x01);                /* stride 4: i ^ 4 */
        x = _mm256_blend_ps(_mm256_add_ps(x, t), _mm256_sub_ps(t, x), 0xF0);
        _mm256_storeu_ps(blk + i, x);
    }
    for (int len = 8; len < p; len *= 2)
        for (int i = 0; i < p; i += 2 * len)
            for (int k = i; k < i + len; k += 8) {
                __m256 u = _mm256_loadu_ps(blk + k), v = _mm256_loadu_ps(blk + k + len);
                _mm256_storeu_ps(blk + k, _mm256_add_ps(u, v));
                _mm256_storeu_ps(blk + k + len, _mm256_sub_ps(u, v));
            }
}

void hadamard_avx2(const hadamard_plan *pl, float *x) {
    int h = pl->h, p = pl->p;
    if (p < 8) {
        hadamard_ref(pl, x);
        return;
    }
    for (int a = 0; a < h; a++) butterflies(x + (size_t)a * p, p);
    const __m256 scale = _mm256_set1_ps(pl->scale);
    if (h == 1) {
        for (int i = 0; i < p; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), scale));
        return;
    }
    __m256 col[HADAMARD_MAX_H];
    for (int j = 0; j < p; j += 8) {
        for (int a = 0; a < h; a++) col[a] = _mm256_loadu_ps(x + (size_t)a * p + j);
        for (int a = 0; a < h; a++) {
            const int8_t *row = pl->base + (size_t)a * h;
            __m256 acc = _mm256_setzero_ps();
            for (int b = 0; b < h; b++) {
                if (row[b] > 0) acc = _mm256_add_ps(acc, col[b]);
                else if (row[b] < 0) acc = _mm256_sub_ps(acc, col[b]);
            }
            _mm256_storeu_ps(x + (size_t)a * p + j, _mm256_mul_ps(acc, scale));
        }
    }
}
#else
void hadamard_avx2(const hadamard_plan *pl, float *x) { hadamard_ref(pl, x); }
#endif
