/* PVQ weights in the runtime: loading (the codec of a layout and gain-level set, shared between the
 * tensors that use it; the row scales; validation of every field before use) and the row-range
 * products the forward pass runs on its threads.
 *
 * Precision. Decode (one token) quantizes the activations to int8 per 128 values with one float
 * scale (pvq_quantize_x_q8, like llama.cpp's Q8 activations for its k-quants) and runs the codec's
 * integer dot (AVX-512 VBMI+VNNI, else AVX2, else the reference): the weights stay int8 pyramid
 * points, so the product is exact in integers and only x's rounding (relative 1/254 of the block
 * maximum per value) and the float sums remain. Batches (prompt processing, perplexity) decode a tile
 * of PVQ_TILE_ROWS rows once into the repacked layout (int8 pyramid points and float32 group scales:
 * the format's exact weights, no second rounding) and run the same integer products against every
 * token's activations quantized the same way: a batch's product is the one-token product, bit for bit on
 * AVX2 (rows of a multiple of 64), the decode cost shared by the batch. Layouts without a fast path
 * (D != 8, large K) decode their tile to float32 and take f32 activations instead. */
#ifndef PVQ_PVQ_MATMUL_H
#define PVQ_PVQ_MATMUL_H

#include "gguf.h"
#include "kernels/pvq_codec.h"

#include <stddef.h>
#include <stdint.h>

/* A layout with its gain levels, and the kernels chosen for it. */
typedef struct {
    pvq_codec codec;
    pvq_kernels k[ISA_COUNT]; /* per kernel set, so that the set may change while the model is loaded */
} pvq_layout;

/* The distinct layouts of a model (a model has a few: one per layout and row length). */
typedef struct {
    pvq_layout **items;
    int n;
} pvq_layouts;

/* What a PVQ weight carries besides its rows; layout is NULL for the other types. */
typedef struct {
    const pvq_layout *layout;
    const uint16_t *scales; /* n_out fp16 row scales, the "<name>.pvq_scale" tensor in the mapping */
    uint8_t *repacked;      /* owned: the rows in the repacked layout (pvq_codec.h), or NULL */
    size_t repacked_row_bytes;
    int f32_activations;    /* products read x as float32, not as int8 (pvq_quantize_x) */
} pvq_weight;

/* How a model's PVQ products run: from the PVQ fields with int8 activations (the default), from rows
 * repacked at load with int8 activations (faster decode, more RAM), or from the PVQ fields with float32
 * activations (slower; the same arithmetic as the converter's torch model up to float rounding). */
typedef enum { PVQ_MODE_NATIVE = 0, PVQ_MODE_REPACKED, PVQ_MODE_F32 } pvq_mode;

/* For tensor t of type PVQ with rows of n: finds "<name>.pvq_scale" and "pvq.gain_levels.<name>",
 * checks them and every field of every row, and shares or builds the layout in `set`. In PVQ_MODE_REPACKED,
 * a weight of a fast-path layout (D == 8) also gets its rows in the repacked layout (12 bits per weight of RAM besides
 * the mapping) that decode then reads instead of the PVQ fields. Returns 0, or -1 with a message naming the tensor. */
int pvq_weight_load(pvq_weight *pw, pvq_layouts *set, const gguf_file *f, const gguf_tensor *t, pvq_mode mode,
                    char *err, size_t err_len);
void pvq_weight_free(pvq_weight *pw);
void pvq_layouts_free(pvq_layouts *set);

/* Bytes pvq_quantize_x writes for n activations. */
size_t pvq_xq_bytes(int64_t n);
/* x as the integer kernels read it: int8 values, then one float scale per 128. */
void pvq_quantize_x(const float *x, int64_t n, void *xq);

#define PVQ_TILE_ROWS 16
/* Bytes of the per-thread scratch of pvq_matmul_rows for rows of n: PVQ_TILE_ROWS rows decoded. */
size_t pvq_tile_bytes(int64_t n);

/* y[r] for rows r0 <= r < r1 of one token: x (f32) and xq (pvq_quantize_x of x). */
void pvq_matvec_rows(const pvq_weight *pw, const uint8_t *data, size_t row_bytes, int64_t n, int64_t r0, int64_t r1,
                     const float *x, const void *xq, float *y);
/* out[t * out_stride + r] for rows r0 <= r < r1 and tokens t < T of x[T][n] (f32); xq holds
 * pvq_quantize_x of each token, xq_stride bytes apart; tile holds pvq_tile_bytes(n). */
void pvq_matmul_rows(const pvq_weight *pw, const uint8_t *data, size_t row_bytes, int64_t n, int64_t r0, int64_t r1,
                     const float *x, const void *xq, size_t xq_stride, int T, float *out, int64_t out_stride,
                     void *tile);

/* The matrix side of the PVQ row of the traits table (types.h, types.c), for a model.h weight whose
 * `pvq` is loaded: */
struct weight;
size_t pvq_weight_xq_bytes(uint32_t id, int64_t n); /* pvq_xq_bytes(n) for every layout */
/* pvq_quantize_x of one token, or nothing for a weight with f32 activations (its products read x) */
void pvq_weight_quantize_x(const struct weight *w, const float *x, void *xq);
/* rows_fn: pvq_matvec_rows for one token, pvq_matmul_rows for batches (scratch: pvq_tile_bytes) */
void pvq_weight_rows(const struct weight *w, int64_t r0, int64_t r1, int T, const float *x, const void *xq,
                     size_t xq_stride, float *out, int64_t out_stride, void *scratch);
/* row r decoded to float32 as the format defines it (an embedding lookup) */
void pvq_weight_get_row(const struct weight *w, int64_t r, float *out);

#endif
