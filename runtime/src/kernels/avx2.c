/* AVX2 (+FMA, F16C) dot products, and the AVX512-VNNI variant of Q8_0 (built with -mavx2 -mfma -mf16c:
 * called only when the active kernel set has them). Each has a scalar reference in ref.c;
 * tests/test_runtime_kernels.py compares them on random rows. */
#include "../types.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#include <math.h>

static float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The halves added, then (0+1) + (2+3) by two hadds: ggml's GGML_F32x8_REDUCE. */
static float hadd_sum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(_mm_hadd_ps(s, s));
}

/* llama.cpp's orders for F32, as for F16 below: ggml_vec_dot_f32 (four accumulators, the tail fused into
 * a float sum) for single rows, tinyBLAS (one accumulator) for batches. */
void dot_f32_avx2(int64_t n, const void *w, const void *x, float *out) {
    const float *a = w, *b = x;
    __m256 s[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++)
            s[j] = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8 * j), _mm256_loadu_ps(b + i + 8 * j), s[j]);
    float sum = hadd_sum8(_mm256_add_ps(_mm256_add_ps(s[0], s[2]), _mm256_add_ps(s[1], s[3])));
    for (; i < n; i++) sum = fmaf(a[i], b[i], sum);
    *out = sum;
}

void dot_f32_avx2_batch(int64_t n, const void *w, const void *x, float *out) {
    if (n % 8) {
        dot_f32_avx2(n, w, x, out);
        return;
    }
    const float *a = w, *b = x;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    *out = hsum8(acc);
}

static inline __m256 load_f16(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

/* The order of llama.cpp's ggml_vec_dot_f16 on AVX2 (its single-row products): four accumulators
 * taking 32 elements per step, added (0+2) + (1+3), the halves added, then two hadds; a tail past the
 * last 32 in double. */
void dot_f16_avx2(int64_t n, const void *w, const void *x, float *out) {
    const uint16_t *a = w, *b = x;
    __m256 s[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) s[j] = _mm256_fmadd_ps(load_f16(a + i + 8 * j), load_f16(b + i + 8 * j), s[j]);
    double sum = hadd_sum8(_mm256_add_ps(_mm256_add_ps(s[0], s[2]), _mm256_add_ps(s[1], s[3])));
    for (; i < n; i++) sum += fp16_to_f32(a[i]) * fp16_to_f32(b[i]);
    *out = (float)sum;
}

/* The order of llama.cpp's tinyBLAS on AVX2 (its batch products): one accumulator over the row, then
 * hsum8. tinyBLAS takes only rows of a multiple of 8; other rows go to ggml_vec_dot_f16 there too. */
void dot_f16_avx2_batch(int64_t n, const void *w, const void *x, float *out) {
    if (n % 8) {
        dot_f16_avx2(n, w, x, out);
        return;
    }
    const uint16_t *a = w, *b = x;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 8) acc = _mm256_fmadd_ps(load_f16(a + i), load_f16(b + i), acc);
    *out = hsum8(acc);
}

/* 2 weight rows x 4 activation rows of dot_f16_avx2_batch at once (the same sums). */
void tile_f16_avx2(int64_t n, const void *w, size_t w_stride, const void *x, size_t x_stride, float *out,
                   size_t out_stride) {
    if (n % 8) {
        #pragma GCC unroll 4
        for (int r = 0; r < 2; r++)
            #pragma GCC unroll 4
            for (int t = 0; t < 4; t++)
                dot_f16_avx2(n, (const uint8_t *)w + r * w_stride, (const uint8_t *)x + t * x_stride,
                             &out[t * out_stride + r]);
        return;
    }
    __m256 acc[2][4];
    #pragma GCC unroll 4
    for (int r = 0; r < 2; r++)
        #pragma GCC unroll 4
        for (int t = 0; t < 4; t++) acc[r][t] = _mm256_setzero_ps();
    const uint16_t *w0 = w, *w1 = (const uint16_t *)((const uint8_t *)w + w_stride);
    const uint16_t *xr[4];
    #pragma GCC unroll 4
    for (int t = 0; t < 4; t++) xr[t] = (const uint16_t *)((const uint8_t *)x + t * x_stride);
    for (int64_t i = 0; i < n; i += 8) {
        __m256 a0 = load_f16(w0 + i), a1 = load_f16(w1 + i);
        #pragma GCC unroll 4
        for (int t = 0; t < 4; t++) {
            __m256 b = load_f16(xr[t] + i);
            acc[0][t] = _mm256_fmadd_ps(a0, b, acc[0][t]);
            acc[1][t] = _mm256_fmadd_ps(a1, b, acc[1][t]);
        }
    }
    #pragma GCC unroll 4
    for (int r = 0; r < 2; r++)
        #pragma GCC unroll 4
        for (int t = 0; t < 4; t++) out[t * out_stride + r] = hsum8(acc[r][t]);
}

static inline __m256 load_bf16(const uint16_t *p) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

void dot_bf16_avx2(int64_t n, const void *w, const void *x, float *out) {
    const uint16_t *a = w, *b = x;
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(load_bf16(a + i), load_bf16(b + i), s0);
        s1 = _mm256_fmadd_ps(load_bf16(a + i + 8), load_bf16(b + i + 8), s1);
    }
    float s = hsum8(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += bf16_to_f32(a[i]) * bf16_to_f32(b[i]);
    *out = s;
}

/* Columns [c, c + 8 * width) of every lane, the lane's accumulators in registers over its positions. */
static inline void lane_sums_cols(int width, int64_t n, int lanes, int64_t n_pos, const float *w, const uint16_t *v,
                                  size_t v_stride, float *out, int64_t c) {
    for (int l = 0; l < lanes; l++) {
        __m256 acc[8];
        #pragma GCC unroll 8
        for (int k = 0; k < 8; k++) acc[k] = _mm256_setzero_ps();
        for (int64_t p = l; p < n_pos; p += lanes) {
            __m256 wp = _mm256_set1_ps(w[p]);
            #pragma GCC unroll 8
            for (int k = 0; k < 8; k++)
                if (k < width) acc[k] = _mm256_fmadd_ps(wp, load_f16(v + (size_t)p * v_stride + c + 8 * k), acc[k]);
        }
        #pragma GCC unroll 8
        for (int k = 0; k < 8; k++)
            if (k < width) _mm256_storeu_ps(out + l * n + c + 8 * k, acc[k]);
    }
}

void lane_sums_f16_avx2(int64_t n, int lanes, int64_t n_pos, const float *w, const uint16_t *v, size_t v_stride,
                        float *out) {
    int64_t c = 0;
    for (; c + 64 <= n; c += 64) lane_sums_cols(8, n, lanes, n_pos, w, v, v_stride, out, c);
    for (; c + 8 <= n; c += 8) lane_sums_cols(1, n, lanes, n_pos, w, v, v_stride, out, c);
    for (; c < n; c++) /* the last columns, each in the same order */
        for (int l = 0; l < lanes; l++) {
            float y = 0.0f;
            for (int64_t p = l; p < n_pos; p += lanes) y = fmaf(w[p], fp16_to_f32(v[(size_t)p * v_stride + c]), y);
            out[l * n + c] = y;
        }
}

void f32_to_f16_row_f16c(const float *src, void *dst, int64_t n) {
    uint16_t *d = dst;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(d + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) d[i] = f32_to_fp16(src[i]);
}

void f16_to_f32_row_f16c(const void *src, float *dst, int64_t n) {
    const uint16_t *h = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_f16(h + i));
    for (; i < n; i++) dst[i] = fp16_to_f32(h[i]);
}

/* exp as llama.cpp's ggml_v_expf computes it on AVX2, lane for lane the same operations as exp_ref. */
static __m256 exp8(__m256 x) {
    const __m256 shift = _mm256_set1_ps(0x1.8p23f);
    __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), shift), n = _mm256_sub_ps(z, shift);
    __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f), _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
    __m256i e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    __m256 k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_set1_epi32(0x3f800000)));
    __m256 an = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), n), u = _mm256_mul_ps(b, b);
    __m256 j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b, _mm256_set1_ps(0x1.573e2ep-5f)), u,
                        _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b, _mm256_set1_ps(0x1.fffdb6p-2f))),
        u, _mm256_mul_ps(_mm256_set1_ps(0x1.ffffecp-1f), b));
    __m256 big = _mm256_cmp_ps(an, _mm256_set1_ps(126.0f), _CMP_GT_OQ);
    __m256 normal = _mm256_fmadd_ps(j, k, k);
    if (!_mm256_movemask_ps(big)) return normal;
    /* |n| > 126: scale in two steps so 2^n neither overflows nor flushes early; |n| > 192: 0 or inf */
    __m256i g = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
                                 _mm256_set1_epi32((int)0x82000000u));
    __m256 s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f000000)));
    __m256 s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    __m256 scaled = _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1);
    __m256 huge = _mm256_cmp_ps(an, _mm256_set1_ps(192.0f), _CMP_GT_OQ);
    return _mm256_blendv_ps(_mm256_blendv_ps(normal, scaled, big), _mm256_mul_ps(s1, s1), huge);
}

void exp_avx2(int64_t n, float *y, const float *x) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, exp8(_mm256_loadu_ps(x + i)));
    for (; i < n; i++) y[i] = exp_ref(x[i]);
}

void swiglu_avx2(int64_t n, float *y, const float *gate, const float *up) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 silu = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
        _mm256_storeu_ps(y + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
    }
    swiglu_ref(n - i, y + i, gate + i, up + i);
}

/* Products of signed bytes: maddubs needs an unsigned operand, so move w's sign onto x. */
static inline __m256i q8_products(const int8_t *wq, const int8_t *xq) {
    __m256i wv = _mm256_loadu_si256((const __m256i *)wq), xv = _mm256_loadu_si256((const __m256i *)xq);
    __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
    return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

static inline __m256 q8_scale(const block_q8_0 *a, const block_q8_0 *b) {
    return _mm256_set1_ps(_cvtsh_ss(a->d) * _cvtsh_ss(b->d));
}

/* One 8-lane accumulator, blocks in order: the same sums as llama.cpp's tinyBLAS Q8_0 path. */
void dot_q8_0_avx2(int64_t n, const void *w, const void *x, float *out) {
    const block_q8_0 *a = w, *b = x;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK8_0; i++)
        acc = _mm256_fmadd_ps(q8_scale(a + i, b + i), _mm256_cvtepi32_ps(q8_products(a[i].qs, b[i].qs)), acc);
    *out = hsum8(acc);
}

/* 2 weight rows x 4 activation rows of dot_q8_0_avx2 at once (the same sums). */
void tile_q8_0_avx2(int64_t n, const void *w, size_t w_stride, const void *x, size_t x_stride, float *out,
                    size_t out_stride) {
    __m256 acc[2][4];
    #pragma GCC unroll 4
    for (int r = 0; r < 2; r++)
        #pragma GCC unroll 4
        for (int t = 0; t < 4; t++) acc[r][t] = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK8_0; i++)
        #pragma GCC unroll 4
        for (int r = 0; r < 2; r++) {
            const block_q8_0 *a = (const block_q8_0 *)((const uint8_t *)w + r * w_stride) + i;
            #pragma GCC unroll 4
            for (int t = 0; t < 4; t++) {
                const block_q8_0 *b = (const block_q8_0 *)((const uint8_t *)x + t * x_stride) + i;
                acc[r][t] = _mm256_fmadd_ps(q8_scale(a, b), _mm256_cvtepi32_ps(q8_products(a->qs, b->qs)), acc[r][t]);
            }
        }
    #pragma GCC unroll 4
    for (int r = 0; r < 2; r++)
        #pragma GCC unroll 4
        for (int t = 0; t < 4; t++) out[t * out_stride + r] = hsum8(acc[r][t]);
}

/* 2 f32 weight rows x 4 f32 activation rows (PVQ batches: rows decoded to floats). 6 loads per 8 FMAs
 * instead of 2 per 1 in dot_f32_avx2, so the products run at the FMA rate, not the load rate. */
void tile_f32_avx2(int64_t n, const void *w, size_t w_stride, const void *x, size_t x_stride, float *out,
                   size_t out_stride) {
    const float *a[2] = {w, (const float *)((const uint8_t *)w + w_stride)}, *b[4];
    for (int t = 0; t < 4; t++) b[t] = (const float *)((const uint8_t *)x + t * x_stride);
    __m256 acc[2][4];
    for (int r = 0; r < 2; r++)
        for (int t = 0; t < 4; t++) acc[r][t] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 w0 = _mm256_loadu_ps(a[0] + i), w1 = _mm256_loadu_ps(a[1] + i);
        for (int t = 0; t < 4; t++) {
            __m256 xv = _mm256_loadu_ps(b[t] + i);
            acc[0][t] = _mm256_fmadd_ps(w0, xv, acc[0][t]);
            acc[1][t] = _mm256_fmadd_ps(w1, xv, acc[1][t]);
        }
    }
    for (int r = 0; r < 2; r++)
        for (int t = 0; t < 4; t++) {
            float s = hsum8(acc[r][t]);
            for (int64_t k = i; k < n; k++) s += a[r][k] * b[t][k];
            out[t * out_stride + r] = s;
        }
}

/* dpbusd gives the same int32 lane sums as maddubs+madd here (|w| <= 128, |x| <= 127: no saturation).
 * The avx512 kernel set only (its CPUs have AVX512-VNNI). */
__attribute__((target("avx512vnni,avx512vl"))) void dot_q8_0_vnni(int64_t n, const void *w, const void *x, float *out) {
    const block_q8_0 *a = w, *b = x;
    __m256 acc = _mm256_setzero_ps();
    const __m256i zero = _mm256_setzero_si256();
    for (int64_t i = 0; i < n / QK8_0; i++) {
        __m256i wv = _mm256_loadu_si256((const __m256i *)a[i].qs);
        __m256i xv = _mm256_loadu_si256((const __m256i *)b[i].qs);
        __m256i p = _mm256_dpbusd_epi32(zero, _mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
        acc = _mm256_fmadd_ps(q8_scale(a + i, b + i), _mm256_cvtepi32_ps(p), acc);
    }
    *out = hsum8(acc);
}
#endif
