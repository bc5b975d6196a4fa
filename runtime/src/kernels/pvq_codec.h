/* The PVQ tensor type: layout parameters, count tables, validation and row kernels.
 *
 * A PVQ row of n weights is G = n / D fields of W = B + b bits (B = bit length of N(D,K) - 1),
 * packed LSB-first; field g holds (shape index << b) | gain code.  Weight i of group g decodes to
 *     gain = scale_row * level[code]                     (float32 multiply)
 *     s    = gain / sqrtf((float) sum_j y_j^2)          (float32 sqrt, divide)
 *     w_i  = (float) y_i * s                            (float32 multiply)
 * with y the pyramid point of the index (docs/format.md, "PVQ tensor type").  These functions are pure:
 * packed bytes + a codec in, floats out; the runtime wires them into its type traits. */
#ifndef PVQ_CODEC_H
#define PVQ_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "isa.h"

#define PVQ_TYPE_BASE       0x50000000u
#define PVQ_MAX_D           64
#define PVQ_MAX_K           65535
#define PVQ_MAX_GAIN_BITS   8
#define PVQ_MAX_FIELD_BITS  56

/* Tables of the D == 8 fast path: the split of a group into halves of 4, and every point of
 * P(4, k), k <= K, as four int8 in one uint32 (byte j = coordinate j; the scalar kernels and the CUDA
 * decoder read it, the AVX2 and AVX-512 ones decode the halves by their closed forms instead). */
#define PVQ_ARITH_MAX_K 29     /* the closed-form decoders' largest K: a half's index fits 16 bits */
typedef struct pvq_fast8 {
    int ntab;                 /* table entries: the power of two >= max(16, K + 2) */
    uint32_t *cum;            /* cum[k1]  = class_base[k1], the class's first code;  cum[j > K] = 2^31 - 1 */
    uint32_t *n2;             /* n2[k1]   = N(4, K - k1) */
    float *inv_n2;            /* 1 / n2[k1] */
    uint32_t *base_lo;        /* base_lo[k1] = offset of P(4, k1) in lut4 */
    uint32_t *base_hi;        /* base_hi[k1] = offset of P(4, K - k1) in lut4 */
    uint32_t *lut4;
    size_t lut4_len;
    /* k1 of an index without a search (the scalar kernel): every class [cum[k1], cum[k1+1]) is at
     * least 2^bucket_shift wide, so the class of idx is bucket_k1[idx >> bucket_shift] or the next. */
    uint8_t *bucket_k1;
    size_t bucket_len;        /* entries of bucket_k1: every code below class_base[K + 1] has one */
    int bucket_shift;
    /* AVX-512 field extraction.  Wide: qword j of an 8-group chunk gathers bytes j*W/8 + t (t < 8),
     * shifted right by (j*W) % 8.  Narrow (every field of a 16-group step fits a dword after its
     * byte offset): dword j of the step gathers bytes j*W/8 + t (t < 4), shifted by (j*W) % 8. */
    uint8_t field_perm[64];
    uint64_t field_shift[8];
    int narrow;
    int exact_div;            /* every remainder r and divisor n2 satisfy r + n2 < 2^22: the quotient is
                               * (int)((r + 0.5) * (1/n2)) in float32 without correction */
    uint8_t field_perm32[64];
    uint32_t field_shift32[16];
    /* AVX2 field extraction of an 8-group chunk.  Narrow (every field fits a dword after its offset):
     * 16 bytes at the chunk and 16 at byte avx2_base1 form the two lanes, vpshufb with avx2_shuf
     * gathers field j's bytes in dword j, then a shift by avx2_shift[j].  Else qwords: the 16 bytes at
     * avx2_wide_base[l] form lane l of the registers (fields 0, 1 | 4, 5) and (2, 3 | 6, 7), vpshufb with
     * avx2_wide_shuf gathers each field's 8 bytes, then a shift by avx2_wide_shift. */
    int avx2_narrow, avx2_base1;
    uint8_t avx2_shuf[32];
    uint32_t avx2_shift[8];
    int avx2_wide_base[4];
    uint8_t avx2_wide_shuf[64];
    uint64_t avx2_wide_shift[8];
    /* The AVX2 decoder (K <= PVQ_ARITH_MAX_K): avx2_cum[j] = cum[j] - 1 in every dword (the class count's
     * thresholds, j = 1..K), avx2_thr3 / avx2_thr2 the 3-subset's; avx2_binom3 / avx2_binom2: C(j + 2, 3) and C(j, 2) for j < 32 as vpshufb
     * tables (low bytes of j < 16, high bytes of j < 16, then the same of 16 <= j < 32; 16 bytes twice). */
    uint32_t avx2_cum[PVQ_ARITH_MAX_K + 1][8];
    uint8_t avx2_binom3[4][32], avx2_binom2[4][32];
    int16_t avx2_thr3[32][16], avx2_thr2[32][16];   /* C(c, 3) - 1 and C(c, 2) - 1 in every word (from memory:
                                                     * a constant's broadcast is three instructions) */
    /* The AVX-512 decoder (K <= PVQ_ARITH_MAX_K: a half's index fits 16 bits).  class_of_bucket: k1 of the
     * codes idx >> (B - bucket_bits) when the classes are aligned (bucket_bits 7 or 8, else 0: a search);
     * k_pair[k1] = k1 | (K - k1) << 16; a half's colex rank s gives c3 - 2 = c3_of_key[key(s)] or one more
     * (K <= 14: key = min(s, 60 + s / 16), else min(s, 124 + s / 32)) checked against binom3_next, and
     * s - C(c3, 3) gives the 2-subset: for K <= 14 c2 << 4 | c1 = c2_of_key[s2], else c2 = c2_of_key[min(s2,
     * 28 + s2 / 8)] or one more; binom3 / binom3_next are indexed by c3 - 2, binom2 / binom2_next by c2.
     * pair_sel: word lanes (halves) to byte lanes (pair j of group g in byte 4g + j); lo_sel / hi_sel: the
     * pairs' first (bytes 0-63) and second (64-127) values to coordinates 0-3 / 4-7 of each group. */
    int bucket_bits;
    uint8_t class_of_bucket[256], c3_of_key[256], c2_of_key[128];
    uint8_t pair_sel[64], lo_sel[64], hi_sel[64];
    uint32_t k_pair[32];
    uint16_t binom3_next[32], binom3[32], binom2_next[32], binom2[32];
    /* The AVX2 and AVX-512 kernels take the halves' points from lut4 (one gather per half) instead of their
     * closed form where lut4 is at most 128 KB (K <= 14) and the CPU is an Intel core: there the AVX-512 kernel
     * decodes 3.25 at 1.6x the speed (docs/benchmarks.md); AMD cores keep the closed form (gathers were the v1
     * decoder's wall on Zen). */
    int gather_halves;
} pvq_fast8;

typedef struct pvq_codec {
    int D, K, gain_bits;
    int index_bits, field_bits;
    int block_groups;         /* groups per block: the fewest whose fields fill whole bytes */
    uint64_t n_points;        /* N(D, K) */
    uint64_t *count;          /* count[d * (K + 1) + k] = N(d, k) for d <= D, k <= K */
    float levels[1 << PVQ_MAX_GAIN_BITS];
    uint64_t *class_base;     /* D = 3 or >= 5: first code of each top-level class k1 <= K, and the end of
                               * the used codes (K + 2 entries); NULL for D = 2, 4 (every code < N is a point) */
    int class_align;          /* the classes start at multiples of 2^class_align (0: dense) */
    pvq_fast8 *fast;          /* NULL unless D == 8 and the index fits 31 bits */
} pvq_codec;

/* Layout parameters of a PVQ type id (id = 0x50000000 | D << 20 | b << 16 | K).
 * Returns 0, or -1 with a message in err when the id is not PVQ or any parameter is out of range. */
int pvq_type_params(uint32_t type_id, int *D, int *K, int *gain_bits, char *err, size_t errlen);

/* Builds the tables of one layout.  levels: n_levels float32 gain levels, n_levels must be 2^b, each
 * finite, >= 0, strictly increasing.  Returns 0, or -1 with a message (nothing to free then). */
int pvq_codec_init(pvq_codec *c, uint32_t type_id, const float *levels, size_t n_levels,
                   char *err, size_t errlen);
void pvq_codec_free(pvq_codec *c);
/* Forces the SIMD kernels' halves decoder (gathered from lut4 or closed form; pvq_fast8.gather_halves) so that
 * tests and benchmarks run both on any CPU; no effect without a fast path or where lut4 is larger. */
void pvq_codec_set_gather_halves(pvq_codec *c, int gather);

/* Bytes of a row of n weights, or 0 when n is not a positive multiple of the block. */
size_t pvq_row_bytes(const pvq_codec *c, int64_t n);
/* The same from the type id alone (no tables built): 0 also for an invalid id. */
size_t pvq_type_row_bytes(uint32_t type_id, int64_t n);

/* Checks every field of a row: shape index < N(D, K) (every gain code is valid by construction).
 * Returns -1 when the row is valid, else the first bad group. */
int64_t pvq_validate_row(const pvq_codec *c, const uint8_t *row, int64_t n);

/* Checks a whole tensor before use: its byte size, every row, every fp16 row scale (finite).
 * Returns 0, or -1 with a message naming the row and group. */
int pvq_validate_tensor(const pvq_codec *c, const uint8_t *data, size_t nbytes, int64_t n,
                        int64_t rows, const uint16_t *scales_f16, char *err, size_t errlen);

/* Whether a shape index is a point's: below N(D, K) for D = 2, 4; inside a top-level class otherwise. */
int pvq_index_is_point(const pvq_codec *c, uint64_t index);

/* Pyramid point of one shape index (pvq_index_is_point); the scalar reference of the enumeration. */
void pvq_decode_point(const pvq_codec *c, uint64_t index, int32_t *y);

/* One group of a row: its point y (D values) and its weight scale s = scale * level / ||y|| rounded as the
 * format says, so that weight i is (float) y_i * s. */
float pvq_group_ref(const pvq_codec *c, const uint8_t *row, int64_t g, float scale, int32_t *y);

/* Scalar reference kernels.  row: pvq_row_bytes(c, n) bytes; scale: the row's fp16 scale as float. */
void pvq_dequantize_row_ref(const pvq_codec *c, const uint8_t *row, float scale, int64_t n, float *out);
float pvq_dot_row_ref(const pvq_codec *c, const uint8_t *row, float scale, int64_t n, const float *x);

/* The reference on groups [g0, g1) of a row (out and x point at the row's start): the optimized
 * kernels finish rows whose group count is not a multiple of their step with these. */
void pvq_dequantize_groups_ref(const pvq_codec *c, const uint8_t *row, int64_t g0, int64_t g1,
                               float scale, float *out);
float pvq_dot_groups_ref(const pvq_codec *c, const uint8_t *row, int64_t g0, int64_t g1, float scale,
                         const float *x);

/* Portable table-driven kernels for codecs with a fast path (pvq_scalar.c; the reference otherwise). */
void pvq_dequantize_row_scalar(const pvq_codec *c, const uint8_t *row, float scale, int64_t n, float *out);
float pvq_dot_row_scalar(const pvq_codec *c, const uint8_t *row, float scale, int64_t n, const float *x);

/* AVX2 kernels (pvq_avx2.c) and AVX-512 VBMI kernels (pvq_avx512.c) for codecs with a fast path
 * (c->fast != NULL; without one they run the reference; both need K <= PVQ_ARITH_MAX_K too,
 * else they run the table-driven scalar kernels); same results as the reference:
 * dequantize bit-identical, dot up to rounding.  The CPU must run their kernel set (isa_cpu_supports). */
void pvq_dequantize_row_avx2(const pvq_codec *c, const uint8_t *row, float scale, int64_t n, float *out);
float pvq_dot_row_avx2(const pvq_codec *c, const uint8_t *row, float scale, int64_t n, const float *x);
void pvq_dequantize_row_avx512(const pvq_codec *c, const uint8_t *row, float scale, int64_t n, float *out);
float pvq_dot_row_avx512(const pvq_codec *c, const uint8_t *row, float scale, int64_t n, const float *x);

/* Activations quantized for the integer dot of the D == 8 fast path (as llama.cpp quantizes
 * activations to Q8 for its quantized types): per step of 16 groups (128 values), one float scale
 * xs = max|x| / 127 and int8 xq = round(x / xs) stored group by group as two planes:
 * xq[128 s + 64 h + 4 g + j] = q(x[128 s + 8 g + 4 h + j]) (h: half, g: group, j < 4).
 * xq needs 128 * ceil(n / 128) bytes, xs ceil(n / 128) floats; the last step is zero-padded. */
void pvq_quantize_x_q8(const float *x, int64_t n, int8_t *xq, float *xs);
void pvq_quantize_x_q8_avx2(const float *x, int64_t n, int8_t *xq, float *xs); /* the same bytes */
/* D == 8 only (the caller checks c->D).  The groups variant covers groups [g0, g1) of a row, one group after
 * the other from 0.  The row's product fixes its float order, which every kernel follows bit for bit (a
 * token's product is the same alone or in a batch, repacked or not, on every kernel set): group g's integer
 * dot d_g (exact) gives fmaf(d_g, s_g * xs, lane[g % 8]) over the groups of whole chunks of 8, in order;
 * then pvq_sum_lanes8; then plus the groups past the last whole chunk by the groups variant. */
float pvq_dot_groups_q8_ref(const pvq_codec *c, const uint8_t *row, int64_t g0, int64_t g1, float scale,
                            const int8_t *xq, const float *xs);
float pvq_dot_row_q8_ref(const pvq_codec *c, const uint8_t *row, float scale, int64_t n,
                         const int8_t *xq, const float *xs);
float pvq_dot_row_q8_scalar(const pvq_codec *c, const uint8_t *row, float scale, int64_t n,
                            const int8_t *xq, const float *xs);
float pvq_dot_row_q8_avx2(const pvq_codec *c, const uint8_t *row, float scale, int64_t n,
                          const int8_t *xq, const float *xs);
float pvq_dot_row_q8_avx512(const pvq_codec *c, const uint8_t *row, float scale, int64_t n,
                            const int8_t *xq, const float *xs);
/* y = W x for a whole tensor: rows of pvq_row_bytes(c, n) bytes back to back, fp16 row scales as
 * stored in "<name>.pvq_scale", activations from pvq_quantize_x_q8 (D == 8 only). */
void pvq_matvec_q8_ref(const pvq_codec *c, const uint8_t *data, const uint16_t *scales_f16, int64_t rows,
                       int64_t n, const int8_t *xq, const float *xs, float *y);
void pvq_matvec_q8_scalar(const pvq_codec *c, const uint8_t *data, const uint16_t *scales_f16, int64_t rows,
                          int64_t n, const int8_t *xq, const float *xs, float *y);
void pvq_matvec_q8_avx2(const pvq_codec *c, const uint8_t *data, const uint16_t *scales_f16, int64_t rows,
                        int64_t n, const int8_t *xq, const float *xs, float *y);
void pvq_matvec_q8_avx512(const pvq_codec *c, const uint8_t *data, const uint16_t *scales_f16, int64_t rows,
                          int64_t n, const int8_t *xq, const float *xs, float *y);
/* The repacked layout of a D == 8 row (an optional in-memory form for faster decode, and the form a batch
 * decodes a tile of rows into; the file stays PVQ): per step of 16 groups, the points as int8 in the planes
 * pvq_quantize_x_q8 uses for x (128 bytes: pt[64 h + 4 g + j] = y_g[4 h + j]), then the 16 group scales s
 * as float32 (64 bytes); the last step is zero-padded.  The integer products equal the PVQ kernels'; only
 * the decoding is gone.  Needs |y_i| <= 127: codecs with a fast path (K <= 127). */
#define PVQ_REPACKED_STEP_BYTES (128 + 16 * 4)
size_t pvq_repacked_row_bytes(int64_t n);
void pvq_repack_row(const pvq_codec *c, const uint8_t *row, float scale, int64_t n, uint8_t *out);
/* Groups [g0, g1) of a row into its repacked form out (the optimized repacking finishes rows with this). */
void pvq_repack_groups_ref(const pvq_codec *c, const uint8_t *row, int64_t g0, int64_t g1, float scale, uint8_t *out);
/* The same bytes by the AVX2 decoder (c->fast only). */
void pvq_repack_row_avx2(const pvq_codec *c, const uint8_t *row, float scale, int64_t n, uint8_t *out);
float pvq_dot_repacked_ref(const uint8_t *prow, int64_t n, const int8_t *xq, const float *xs);
float pvq_dot_repacked_avx2(const uint8_t *prow, int64_t n, const int8_t *xq, const float *xs);
/* Batches: PVQ_TILE_R repacked rows (prow + r * prow_stride) times PVQ_TILE_T tokens' activations (token t's
 * int8 values at xq + t * x_stride bytes, its step scales at xs + t * x_stride bytes), into
 * out[t * out_stride + r].  The reference is pvq_dot_repacked_ref per pair; the AVX2 tile gives exactly
 * pvq_dot_repacked_avx2's results (the same integer dots and float operations per pair), each row's
 * loads and |y| shared by the tokens. */
#define PVQ_TILE_R 2
#define PVQ_TILE_T 4
typedef void (*pvq_tile_repacked_fn)(const uint8_t *prow, size_t prow_stride, int64_t n, const int8_t *xq,
                                     const float *xs, size_t x_stride, float *out, size_t out_stride);
void pvq_tile_repacked_ref(const uint8_t *prow, size_t prow_stride, int64_t n, const int8_t *xq, const float *xs,
                           size_t x_stride, float *out, size_t out_stride);
void pvq_tile_repacked_avx2(const uint8_t *prow, size_t prow_stride, int64_t n, const int8_t *xq, const float *xs,
                            size_t x_stride, float *out, size_t out_stride);
void pvq_tile_repacked_avx512(const uint8_t *prow, size_t prow_stride, int64_t n, const int8_t *xq, const float *xs,
                              size_t x_stride, float *out, size_t out_stride);   /* the AVX2 tile's results, VNNI */

/* IEEE half (as stored in F16 tensors) to float, exactly. */
float pvq_half_to_float(uint16_t h);

/* The kernels of a kernel set for a codec: the reference when no fast path applies (D != 8 or a
 * 32-bit index), else AVX-512, AVX2 or the portable table-driven ones.  matvec_q8 is NULL when
 * D != 8 (use dot with float activations then); the repacked layout's kernels are NULL without a fast
 * path (a batch then decodes rows to float).  AVX-512 CPUs repack with the AVX2 kernel and run the VNNI tile. */
typedef void (*pvq_dequantize_fn)(const pvq_codec *, const uint8_t *, float, int64_t, float *);
typedef float (*pvq_dot_fn)(const pvq_codec *, const uint8_t *, float, int64_t, const float *);
typedef void (*pvq_matvec_q8_fn)(const pvq_codec *, const uint8_t *, const uint16_t *, int64_t, int64_t,
                                 const int8_t *, const float *, float *);
typedef void (*pvq_repack_fn)(const pvq_codec *, const uint8_t *, float, int64_t, uint8_t *);
typedef float (*pvq_dot_repacked_fn)(const uint8_t *, int64_t, const int8_t *, const float *);
typedef struct pvq_kernels {
    const char *name;                 /* "ref", "scalar", "avx2" or "avx512" */
    pvq_dequantize_fn dequantize;
    pvq_dot_fn dot;
    pvq_matvec_q8_fn matvec_q8;
    pvq_repack_fn repack;
    pvq_dot_repacked_fn dot_repacked;
    pvq_tile_repacked_fn tile_repacked;
} pvq_kernels;
void pvq_select_kernels(const pvq_codec *c, isa_id isa, pvq_kernels *k);

/* Whether the closed-form decoders (AVX2, AVX-512) apply: a fast path and K <= PVQ_ARITH_MAX_K. */
static inline int pvq_closed_form(const pvq_codec *c) { return c->fast && c->K <= PVQ_ARITH_MAX_K; }

/* The eight lanes of an int8 product as AVX2's horizontal sum adds them: ((0+4) + (2+6)) + ((1+5) + (3+7)). */
static inline float pvq_sum_lanes8(const float lane[8])
{
    float h[4];
    for (int i = 0; i < 4; i++) h[i] = lane[i] + lane[i + 4];
    return (h[0] + h[2]) + (h[1] + h[3]);
}

/* y[r] = dot(row r) for the rows of a tensor (the matvec_q8 of kernels whose dot is one row at a time). */
static inline void pvq_matvec_q8_by_rows(float (*dot)(const pvq_codec *, const uint8_t *, float, int64_t,
                                                      const int8_t *, const float *),
                                         const pvq_codec *c, const uint8_t *data, const uint16_t *scales_f16,
                                         int64_t rows, int64_t n, const int8_t *xq, const float *xs, float *y)
{
    size_t rb = pvq_row_bytes(c, n);
    for (int64_t r = 0; r < rows; r++)
        y[r] = dot(c, data + (size_t)r * rb, pvq_half_to_float(scales_f16[r]), n, xq, xs);
}

/* Field g of a row (W bits at bit g * W); reads only bytes of the row. */
static inline uint64_t pvq_read_field(const uint8_t *row, int64_t g, int W)
{
    uint64_t bit = (uint64_t)g * (uint64_t)W, v = 0;
    const uint8_t *p = row + (bit >> 3);
    int shift = (int)(bit & 7), nbytes = (shift + W + 7) >> 3;
    for (int i = 0; i < nbytes; i++) v |= (uint64_t)p[i] << (8 * i);
    return (v >> shift) & ((UINT64_C(1) << W) - 1);
}

#endif
