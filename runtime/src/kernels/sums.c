/* The orders in which llama.cpp's CPU backend, as built for an AVX2 or for an AVX-512 machine, adds the
 * terms of attention's softmax denominator and of probabilities . V, for the runtime to form the same sums. Position p of a
 * row goes to lane p % lanes (fused multiply-adds in order of p); the lanes are then added in the order
 * of the SIMD reduction llama.cpp ends with. llama.cpp pads the KV cache to 256 cells and masks the
 * unused ones to probability 0, which adds nothing to any lane, so the same lanes hold for any length.
 *   AVX2: single rows through ggml_vec_dot_f16 (4 registers of 8, added (0+2) + (1+3), halves, two
 *   hadds), batches through tinyBLAS (one register, hsum), softmax in chunks of 8 (hsum each).
 *   AVX-512: single rows 4 registers of 16 ((0+2) + (1+3), then _mm512_reduce_add_ps), batches one
 *   register, softmax in chunks of 16. */
#include "../types.h"

#include <string.h>

/* x[0..16) as _mm512_reduce_add_ps adds it: halves, quarters, then (0+2) + (1+3). */
static float reduce16(const float *x) {
    float a[8], b[4];
    for (int i = 0; i < 8; i++) a[i] = x[i + 8] + x[i];
    for (int i = 0; i < 4; i++) b[i] = a[i + 4] + a[i];
    return (b[0] + b[2]) + (b[1] + b[3]);
}

/* x[0..8) as hsum8 (tinyBLAS, softmax): halves, then (0+2) + (1+3). */
static float reduce8_movehl(const float *x) {
    float a[4];
    for (int i = 0; i < 4; i++) a[i] = x[i + 4] + x[i];
    return (a[0] + a[2]) + (a[1] + a[3]);
}

/* x[0..8) as GGML_F32x8_REDUCE ends: halves, then (0+1) + (2+3) by two hadds. */
static float reduce8_hadd(const float *x) {
    float a[4];
    for (int i = 0; i < 4; i++) a[i] = x[i] + x[i + 4];
    return (a[0] + a[1]) + (a[2] + a[3]);
}

/* Chunks of `width` values, each reduced, added in double. */
static double chunked_sum(const float *v, int64_t n, int width, float (*reduce)(const float *)) {
    double sum = 0;
    for (int64_t c = 0; c < n; c += width) {
        float x[16] = {0};
        memcpy(x, v + c, (size_t)(n - c < width ? n - c : width) * sizeof(float));
        sum += reduce(x);
    }
    return sum;
}

static double softmax_sum_avx2(const float *v, int64_t n) { return chunked_sum(v, n, 8, reduce8_movehl); }
static double softmax_sum_avx512(const float *v, int64_t n) { return chunked_sum(v, n, 16, reduce16); }

/* lanes[4 * width][n] -> out[n]: the four registers added (0+2) + (1+3), then one reduced (ggml_vec_dot_f16's
 * end). Writes over lanes. */
static void reduce_four(float *lanes, int n, float *out, int width, float (*reduce)(const float *)) {
    for (int i = 0; i < width * n; i++)
        lanes[i] = (lanes[i] + lanes[i + 2 * width * n]) + (lanes[i + width * n] + lanes[i + 3 * width * n]);
    for (int d = 0; d < n; d++) {
        float x[16];
        for (int l = 0; l < width; l++) x[l] = lanes[l * n + d];
        out[d] = reduce(x);
    }
}

/* lanes[width][n] -> out[n]: one register reduced (tinyBLAS). */
static void reduce_one(float *lanes, int n, float *out, int width, float (*reduce)(const float *)) {
    for (int d = 0; d < n; d++) {
        float x[16];
        for (int l = 0; l < width; l++) x[l] = lanes[l * n + d];
        out[d] = reduce(x);
    }
}

static void single_avx2(float *lanes, int n, float *out) { reduce_four(lanes, n, out, 8, reduce8_hadd); }
static void batch_avx2(float *lanes, int n, float *out) { reduce_one(lanes, n, out, 8, reduce8_movehl); }
static void single_avx512(float *lanes, int n, float *out) { reduce_four(lanes, n, out, 16, reduce16); }
static void batch_avx512(float *lanes, int n, float *out) { reduce_one(lanes, n, out, 16, reduce16); }

const sum_orders SUMS_AVX2 = {{32, single_avx2}, {8, batch_avx2}, softmax_sum_avx2};
const sum_orders SUMS_AVX512 = {{64, single_avx512}, {16, batch_avx512}, softmax_sum_avx512};
