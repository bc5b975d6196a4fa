/* Scalar reference kernels: conversions between float and the stored types, and the dot products
 * every SIMD kernel is tested against. Conversions are exact (fp16/bf16 round to nearest even). */
#include "../types.h"

#include <math.h>
#include <string.h>

float fp16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: value = man * 2^-24 */
        float f = (float)man * 0x1p-24f;
        memcpy(&bits, &f, 4);
        bits |= sign;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t f32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) /* inf or nan (keep nan quiet) */
        return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 | ((ax >> 13) & 0x3ff) : 0));
    if (ax >= 0x477ff000u) /* rounds to >= 65520: inf */
        return (uint16_t)(sign | 0x7c00);
    if (ax < 0x38800000u) { /* below the smallest normal half: round to a multiple of 2^-24 */
        float a;
        memcpy(&a, &ax, 4);
        return (uint16_t)(sign | (uint16_t)nearbyintf(a * 0x1p24f));
    }
    uint32_t r = ax + 0xfff + ((ax >> 13) & 1); /* round to nearest even at bit 13 */
    return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 64); /* quiet nan */
    return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

void f32_to_f32_row(const void *src, float *dst, int64_t n) { memcpy(dst, src, (size_t)n * 4); }
void f32_copy_row(const float *src, void *dst, int64_t n) { memcpy(dst, src, (size_t)n * 4); }

void f16_to_f32_row(const void *src, float *dst, int64_t n) {
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = fp16_to_f32(s[i]);
}

void f32_to_f16_row(const float *src, void *dst, int64_t n) {
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = f32_to_fp16(src[i]);
}

void bf16_to_f32_row(const void *src, float *dst, int64_t n) {
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = bf16_to_f32(s[i]);
}

void f32_to_bf16_row(const float *src, void *dst, int64_t n) {
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = f32_to_bf16(src[i]);
}

void q8_0_to_f32_row(const void *src, float *dst, int64_t n) {
    const block_q8_0 *b = src;
    for (int64_t i = 0; i < n / QK8_0; i++) {
        float d = fp16_to_f32(b[i].d);
        for (int j = 0; j < QK8_0; j++) dst[i * QK8_0 + j] = d * b[i].qs[j];
    }
}

/* As ggml's x86 quantize_row_q8_0: scale amax/127, multiply by 127/amax, round half to even. */
void f32_to_q8_0_row(const float *src, void *dst, int64_t n) {
    block_q8_0 *b = dst;
    for (int64_t i = 0; i < n / QK8_0; i++) {
        const float *x = src + i * QK8_0;
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; j++) amax = fmaxf(amax, fabsf(x[j]));
        float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        b[i].d = f32_to_fp16(amax / 127.0f);
        for (int j = 0; j < QK8_0; j++) b[i].qs[j] = (int8_t)nearbyintf(x[j] * id);
    }
}

void dot_f32_ref(int64_t n, const void *w, const void *x, float *out) {
    const float *a = w, *b = x;
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    *out = (float)s;
}

void dot_f16_ref(int64_t n, const void *w, const void *x, float *out) {
    const uint16_t *a = w, *b = x;
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)fp16_to_f32(a[i]) * fp16_to_f32(b[i]);
    *out = (float)s;
}

void dot_bf16_ref(int64_t n, const void *w, const void *x, float *out) {
    const uint16_t *a = w, *b = x;
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)bf16_to_f32(a[i]) * bf16_to_f32(b[i]);
    *out = (float)s;
}

void dot_q8_0_ref(int64_t n, const void *w, const void *x, float *out) {
    const block_q8_0 *a = w, *b = x;
    float s = 0;
    for (int64_t i = 0; i < n / QK8_0; i++) {
        int32_t acc = 0;
        for (int j = 0; j < QK8_0; j++) acc += a[i].qs[j] * b[i].qs[j];
        s += fp16_to_f32(a[i].d) * fp16_to_f32(b[i].d) * (float)acc;
    }
    *out = s;
}

void lane_sums_f16_ref(int64_t n, int lanes, int64_t n_pos, const float *w, const uint16_t *v, size_t v_stride,
                       float *out) {
    memset(out, 0, (size_t)lanes * (size_t)n * sizeof(float));
    for (int64_t p = 0; p < n_pos; p++) {
        float *y = out + (p % lanes) * n;
        for (int64_t i = 0; i < n; i++) y[i] = fmaf(w[p], fp16_to_f32(v[(size_t)p * v_stride + i]), y[i]);
    }
}

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* exp(x) as llama.cpp's vectorised ggml_v_expf computes it: n = round(x / ln 2) by the 1.5 * 2^23 shift,
 * b = x - n ln 2 in two fused steps, a degree-5 polynomial j ~ e^b - 1, and 2^n built in the exponent
 * bits (in two factors when |n| > 126). Results differ from libm's expf in the last bit. */
float exp_ref(float x) {
    const float shift = 0x1.8p23f;
    float z = fmaf(x, 0x1.715476p+0f, shift), n = z - shift;
    float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x)), u = b * b;
    uint32_t zb;
    memcpy(&zb, &z, 4);
    uint32_t e = zb << 23;
    float k = from_bits(e + 0x3f800000u);
    float j = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)), u,
                   0x1.ffffecp-1f * b);
    if (!(fabsf(n) > 126.0f)) return fmaf(j, k, k);
    uint32_t g = n <= 0.0f ? 0x82000000u : 0;
    float s1 = from_bits(g + 0x7f000000u), s2 = from_bits(e - g);
    if (fabsf(n) > 192.0f) return s1 * s1;
    return fmaf(s2, j, s2) * s1;
}

void exp_row_ref(int64_t n, float *y, const float *x) {
    for (int64_t i = 0; i < n; i++) y[i] = exp_ref(x[i]);
}

void swiglu_ref(int64_t n, float *y, const float *gate, const float *up) {
    for (int64_t i = 0; i < n; i++) y[i] = gate[i] / (1.0f + exp_ref(0.0f - gate[i])) * up[i];
}
