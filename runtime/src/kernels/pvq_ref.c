/* Scalar reference kernels of the PVQ type: the definition the optimized kernels are tested against. */
#include "pvq_codec.h"

#include <math.h>

float pvq_group_ref(const pvq_codec *c, const uint8_t *row, int64_t g, float scale, int32_t *y)
{
    uint64_t f = pvq_read_field(row, g, c->field_bits);
    pvq_decode_point(c, f >> c->gain_bits, y);
    int64_t q = 0;
    for (int i = 0; i < c->D; i++) q += (int64_t)y[i] * y[i];
    float gain = scale * c->levels[f & ((1u << c->gain_bits) - 1)];
    /* the square root of the exact integer q (< 2^32), correctly rounded to float: the double root of an
     * exactly representable q, rounded once more, is that (53 >= 2 * 24 + 2 bits); (float)q is inexact for
     * q > 2^24, i.e. once K > 4096. The fast kernels (K <= 127) may take sqrtf((float)q): the same value. */
    return gain / (float)sqrt((double)q);
}

void pvq_dequantize_groups_ref(const pvq_codec *c, const uint8_t *row, int64_t g0, int64_t g1,
                               float scale, float *out)
{
    int32_t y[PVQ_MAX_D];
    for (int64_t g = g0; g < g1; g++) {
        float s = pvq_group_ref(c, row, g, scale, y);
        for (int i = 0; i < c->D; i++) out[g * c->D + i] = (float)y[i] * s;
    }
}

float pvq_dot_groups_ref(const pvq_codec *c, const uint8_t *row, int64_t g0, int64_t g1, float scale,
                         const float *x)
{
    int32_t y[PVQ_MAX_D];
    float acc = 0.0f;
    for (int64_t g = g0; g < g1; g++) {
        float s = pvq_group_ref(c, row, g, scale, y), t = 0.0f;
        for (int i = 0; i < c->D; i++) t += (float)y[i] * x[g * c->D + i];
        acc += s * t;
    }
    return acc;
}

void pvq_dequantize_row_ref(const pvq_codec *c, const uint8_t *row, float scale, int64_t n, float *out)
{
    pvq_dequantize_groups_ref(c, row, 0, n / c->D, scale, out);
}

float pvq_dot_row_ref(const pvq_codec *c, const uint8_t *row, float scale, int64_t n, const float *x)
{
    return pvq_dot_groups_ref(c, row, 0, n / c->D, scale, x);
}

void pvq_quantize_x_q8(const float *x, int64_t n, int8_t *xq, float *xs)
{
    for (int64_t s = 0; s * 128 < n; s++) {
        float amax = 0.0f;
        for (int64_t i = s * 128; i < n && i < s * 128 + 128; i++) amax = fmaxf(amax, fabsf(x[i]));
        float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
        xs[s] = d;
        for (int g = 0; g < 16; g++)
            for (int h = 0; h < 2; h++)
                for (int j = 0; j < 4; j++) {
                    int64_t i = s * 128 + 8 * g + 4 * h + j;
                    xq[s * 128 + 64 * h + 4 * g + j] = (int8_t)(i < n ? lrintf(x[i] * id) : 0);
                }
    }
}

float pvq_dot_groups_q8_ref(const pvq_codec *c, const uint8_t *row, int64_t g0, int64_t g1, float scale,
                            const int8_t *xq, const float *xs)
{
    int32_t y[8];
    float acc = 0.0f;
    for (int64_t g = g0; g < g1; g++) {
        float s = pvq_group_ref(c, row, g, scale, y);
        int64_t st = g / 16, gl = g % 16;
        int32_t d = 0;
        for (int i = 0; i < 8; i++) d += y[i] * xq[st * 128 + 64 * (i / 4) + 4 * gl + i % 4];
        acc += s * xs[st] * (float)d;
    }
    return acc;
}

float pvq_dot_row_q8_ref(const pvq_codec *c, const uint8_t *row, float scale, int64_t n,
                         const int8_t *xq, const float *xs)
{
    const int64_t G = n / 8, whole = G / 8 * 8;
    int32_t y[8];
    float lane[8] = {0};
    for (int64_t g = 0; g < whole; g++) {
        float s = pvq_group_ref(c, row, g, scale, y);
        int64_t st = g / 16, gl = g % 16;
        int32_t d = 0;
        for (int i = 0; i < 8; i++) d += y[i] * xq[st * 128 + 64 * (i / 4) + 4 * gl + i % 4];
        lane[g % 8] = fmaf((float)d, s * xs[st], lane[g % 8]);
    }
    return pvq_sum_lanes8(lane) + pvq_dot_groups_q8_ref(c, row, whole, G, scale, xq, xs);
}

float pvq_half_to_float(uint16_t h)
{
    int exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    float v = exp == 0 ? ldexpf((float)man, -24)                       /* zero, subnormal */
            : exp == 31 ? (man ? NAN : INFINITY)
            : ldexpf((float)(man | 0x400), exp - 25);
    return h & 0x8000 ? -v : v;
}

void pvq_matvec_q8_ref(const pvq_codec *c, const uint8_t *data, const uint16_t *scales_f16, int64_t rows,
                       int64_t n, const int8_t *xq, const float *xs, float *y)
{
    pvq_matvec_q8_by_rows(pvq_dot_row_q8_ref, c, data, scales_f16, rows, n, xq, xs, y);
}
