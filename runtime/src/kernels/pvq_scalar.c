/* Portable table-driven kernels of the PVQ type for D == 8 (codec->fast), no SIMD: the same
 * decomposition as the vector kernels (k1 from a bucket table and one compare, one division
 * by a float reciprocal with one correction, two lookups of 4-dim points), one group at a time.
 * Dequantize is bit-identical to pvq_ref.c; dot differs only by summation order. */
#include "pvq_codec.h"

#include <math.h>
#include <string.h>

/* Field g of a row of G groups; a single unaligned 8-byte load unless it would pass the row's end
 * (the load starts at byte g W / 8, the row ends at byte G W / 8). */
static inline uint64_t field(const uint8_t *row, int64_t g, int64_t G, int W)
{
    if ((G - g) * W < 64) return pvq_read_field(row, g, W);
    uint64_t bit = (uint64_t)g * (uint64_t)W, v;
    memcpy(&v, row + (bit >> 3), 8);
    return (v >> (bit & 7)) & ((UINT64_C(1) << W) - 1);
}

/* Point of group g (eight int8) and its weight scale. */
static inline float decode(const pvq_codec *c, const uint8_t *row, int64_t g, int64_t G, float scale,
                           int8_t y[8])
{
    const pvq_fast8 *f = c->fast;
    uint64_t v = field(row, g, G, c->field_bits);
    uint32_t idx = (uint32_t)(v >> c->gain_bits);
    int k1 = f->bucket_k1[idx >> f->bucket_shift];
    k1 += f->cum[k1 + 1] <= idx;
    int32_t r = (int32_t)(idx - f->cum[k1]), n2 = (int32_t)f->n2[k1];
    int32_t q = (int32_t)((float)r * f->inv_n2[k1]);
    int32_t rem = r - q * n2;
    if (rem < 0) { q--; rem += n2; }
    if (rem >= n2) { q++; rem -= n2; }
    uint32_t lo = f->lut4[f->base_lo[k1] + (uint32_t)q], hi = f->lut4[f->base_hi[k1] + (uint32_t)rem];
    memcpy(y, &lo, 4);
    memcpy(y + 4, &hi, 4);
    int32_t sq = 0;
    for (int i = 0; i < 8; i++) sq += y[i] * y[i];
    float gain = scale * c->levels[v & ((1u << c->gain_bits) - 1)];
    return gain / sqrtf((float)sq);
}

void pvq_dequantize_row_scalar(const pvq_codec *c, const uint8_t *row, float scale, int64_t n, float *out)
{
    if (!c->fast) {
        pvq_dequantize_row_ref(c, row, scale, n, out);
        return;
    }
    const int64_t G = n / 8;
    for (int64_t g = 0; g < G; g++) {
        int8_t y[8];
        float s = decode(c, row, g, G, scale, y);
        for (int i = 0; i < 8; i++) out[g * 8 + i] = (float)y[i] * s;
    }
}

float pvq_dot_row_scalar(const pvq_codec *c, const uint8_t *row, float scale, int64_t n, const float *x)
{
    if (!c->fast) return pvq_dot_row_ref(c, row, scale, n, x);
    const int64_t G = n / 8;
    float acc = 0.0f;
    for (int64_t g = 0; g < G; g++) {
        int8_t y[8];
        float s = decode(c, row, g, G, scale, y), t = 0.0f;
        for (int i = 0; i < 8; i++) t += (float)y[i] * x[g * 8 + i];
        acc += s * t;
    }
    return acc;
}

/* The integer dot with Q8 activations in pvq_dot_row_q8_ref's float order (the same bits). */
float pvq_dot_row_q8_scalar(const pvq_codec *c, const uint8_t *row, float scale, int64_t n, const int8_t *xq,
                            const float *xs)
{
    if (!c->fast) return pvq_dot_row_q8_ref(c, row, scale, n, xq, xs);
    const int64_t G = n / 8, whole = G / 8 * 8;
    float lane[8] = {0};
    for (int64_t g = 0; g < whole; g++) {
        int8_t y[8];
        float s = decode(c, row, g, G, scale, y);
        const int8_t *x = xq + g / 16 * 128 + 4 * (g % 16);
        int32_t d = 0;
        for (int i = 0; i < 8; i++) d += y[i] * x[64 * (i / 4) + i % 4];
        lane[g % 8] = fmaf((float)d, s * xs[g / 16], lane[g % 8]);
    }
    return pvq_sum_lanes8(lane) + pvq_dot_groups_q8_ref(c, row, whole, G, scale, xq, xs);
}

void pvq_matvec_q8_scalar(const pvq_codec *c, const uint8_t *data, const uint16_t *scales_f16, int64_t rows,
                          int64_t n, const int8_t *xq, const float *xs, float *y)
{
    pvq_matvec_q8_by_rows(pvq_dot_row_q8_scalar, c, data, scales_f16, rows, n, xq, xs, y);
}
