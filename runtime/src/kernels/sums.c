/* The orders in which llama.cpp's CPU backend, as built for this machine, adds the terms of attention's
 * softmax denominator and of probabilities . V, for the runtime to form the same sums. Position p of a
 * row goes to lane p % lanes (fused multiply-adds in order of p); the lanes are then added in the order
 * of the SIMD reduction llama.cpp ends with. llama.cpp pads the KV cache to 256 cells and masks the
 * unused ones to probability 0, which adds nothing to any lane, so the same lanes hold for any length.
 *   AVX2: single rows through ggml_vec_dot_f16 (4 registers of 8, added (0+2) + (1+3), halves, two
 *   hadds), batches through tinyBLAS (one register, hsum), softmax in chunks of 8 (hsum each).
 *   AVX-512: single rows 4 registers of 16 ((0+2) + (1+3), then _mm512_reduce_add_ps), batches one
 *   register, softmax in chunks of 16. */
#include "../types.h"

#include <string.h>

#if defined(__AVX512F__)
/* x[0..16) as _mm512_reduce_add_ps adds it: halves, quarters, then (0+2) + (1+3). */
static float reduce16(const float *x) {
    float a[8], b[4];
    for (int i = 0; i < 8; i++) a[i] = x[i + 8] + x[i];
    for (int i = 0; i < 4; i++) b[i] = a[i + 4] + a[i];
    return (b[0] + b[2]) + (b[1] + b[3]);
}

#else
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
#endif

#if defined(__AVX512F__)
#define SOFTMAX_CHUNK 16
#define REDUCE_CHUNK reduce16
#else
#define SOFTMAX_CHUNK 8
#define REDUCE_CHUNK reduce8_movehl
#endif

double softmax_sum(const float *v, int64_t n) {
    double sum = 0;
    for (int64_t c = 0; c < n; c += SOFTMAX_CHUNK) {
        float x[SOFTMAX_CHUNK] = {0};
        memcpy(x, v + c, (size_t)(n - c < SOFTMAX_CHUNK ? n - c : SOFTMAX_CHUNK) * sizeof(float));
        sum += REDUCE_CHUNK(x);
    }
    return sum;
}

/* lanes[l][d] for l < lanes, d < n: out[d] = the lanes added in the kernel's order. Writes over lanes. */
static void reduce_single(float *lanes, int n, float *out) {
#if defined(__AVX512F__)
    for (int i = 0; i < 16 * n; i++)
        lanes[i] = (lanes[i] + lanes[i + 32 * n]) + (lanes[i + 16 * n] + lanes[i + 48 * n]);
    for (int d = 0; d < n; d++) {
        float x[16];
        for (int l = 0; l < 16; l++) x[l] = lanes[l * n + d];
        out[d] = reduce16(x);
    }
#else
    for (int i = 0; i < 8 * n; i++)
        lanes[i] = (lanes[i] + lanes[i + 16 * n]) + (lanes[i + 8 * n] + lanes[i + 24 * n]);
    for (int d = 0; d < n; d++) {
        float x[8];
        for (int l = 0; l < 8; l++) x[l] = lanes[l * n + d];
        out[d] = reduce8_hadd(x);
    }
#endif
}

static void reduce_batch(float *lanes, int n, float *out) {
    for (int d = 0; d < n; d++) {
#if defined(__AVX512F__)
        float x[16];
        for (int l = 0; l < 16; l++) x[l] = lanes[l * n + d];
        out[d] = reduce16(x);
#else
        float x[8];
        for (int l = 0; l < 8; l++) x[l] = lanes[l * n + d];
        out[d] = reduce8_movehl(x);
#endif
    }
}

#if defined(__AVX512F__)
const lane_order F16_LANES_SINGLE = {64, reduce_single}, F16_LANES_BATCH = {16, reduce_batch};
#else
const lane_order F16_LANES_SINGLE = {32, reduce_single}, F16_LANES_BATCH = {8, reduce_batch};
#endif
