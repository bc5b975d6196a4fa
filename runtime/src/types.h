/* Tensor types as ggml lays them out, one row of traits per type. A weight row is dotted with an
 * activation vector that was first converted to the type's vec_type (as ggml does: F16 weights meet
 * F16 activations, Q8_0 weights meet activations quantized to Q8_0 per block of 32). Adding a type
 * means adding one row to the table in types.c; PVQ's row has no per-set kernels, only the matrix side,
 * which reads the weight's codec (see T_PVQ). */
#ifndef PVQ_TYPES_H
#define PVQ_TYPES_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/isa.h"

enum ggml_type_id { T_F32 = 0, T_F16 = 1, T_Q8_0 = 8, T_BF16 = 30 };

/* PVQ: one id per layout, 0x50000000 | D << 20 | b << 16 | K (docs/format.md). All valid ids share one
 * row of traits whose per-layout parts (row bytes, the codec with its gain levels, the row scales)
 * come from the id and the file: a PVQ weight carries them in model.h's `weight.pvq`, its per-tensor
 * codec context, and its matrix-side traits (pvq_matmul.c) read them there. */
#define T_PVQ 0x50000000u
static inline int type_is_pvq(uint32_t id) { return (id & 0xF0000000u) == T_PVQ; }

#define QK8_0 32
typedef struct {
    uint16_t d; /* fp16 scale */
    int8_t qs[QK8_0];
} block_q8_0;

/* out = dot(one weight row of n elements, one activation row already in vec_type), n % block == 0 */
typedef void (*dot_fn)(int64_t n, const void *w, const void *x, float *out);

/* The same products for 2 weight rows x 4 activation rows: out[t * out_stride + r]. */
typedef void (*tile_fn)(int64_t n, const void *w, size_t w_stride, const void *x, size_t x_stride, float *out,
                        size_t out_stride);
#define TILE_ROWS 2
#define TILE_COLS 4

struct weight; /* model.h: a matrix's rows in the mapping and, for PVQ, its codec context */

/* The products of rows r0 <= r < r1 of w with T tokens, one thread's share of a matmul:
 * out[t * out_stride + r] = row r . x[t]. x is [T][n_in] float32, xq the same tokens as the type's
 * quantize_x wrote them, xq_stride bytes apart; scratch is scratch_bytes(n_in) bytes of this thread's own. */
typedef void (*rows_fn)(const struct weight *w, int64_t r0, int64_t r1, int T, const float *x, const void *xq,
                        size_t xq_stride, float *out, int64_t out_stride, void *scratch);

/* One row per type. The kernels come per kernel set (kernels/isa.h): index them by isa_active(), or by
 * any set the CPU runs; [ISA_SCALAR] is the reference the others are tested against. The matrix side
 * (xq_bytes ... get_row) is what the forward pass calls: one path for every type, each entry choosing
 * its kernel set itself. */
typedef struct {
    uint32_t id;            /* ggml type id */
    const char *name;
    int64_t block;          /* elements per block */
    size_t block_bytes;     /* bytes per block */
    uint32_t vec_type;      /* activations are converted to this type before dot */
    void (*to_float[ISA_COUNT])(const void *src, float *dst, int64_t n);   /* exact in every set */
    void (*from_float[ISA_COUNT])(const float *src, void *dst, int64_t n); /* NULL if not a vec_type */
    dot_fn dot[ISA_COUNT];        /* one activation row */
    dot_fn dot_batch[ISA_COUNT];  /* the same for batches of >= 2 rows; differs only where llama.cpp sums in
                                   * another order for batches (F16), so logits match it in both */
    tile_fn tile[ISA_COUNT];      /* dot_batch on a 2x4 tile, or NULL */
    /* the matrix side */
    size_t (*xq_bytes)(uint32_t id, int64_t n);                          /* what quantize_x writes for n */
    void (*quantize_x)(const struct weight *w, const float *x, void *xq); /* one token of w->n_in */
    rows_fn rows;
    int64_t batch_rows;  /* a thread's share of a batch's rows is a multiple of this */
    size_t (*scratch_bytes)(int64_t n);                                  /* per thread, for rows of n */
    void (*get_row)(const struct weight *w, int64_t r, float *out);      /* row r as float32 (a lookup) */
} type_traits;

/* NULL for an unknown id (or a PVQ id with out-of-range parameters). */
const type_traits *type_get(uint32_t id);
/* The most any type's xq_bytes and scratch_bytes ask for rows of n: the state's buffers. */
size_t type_max_xq_bytes(int64_t n);
size_t type_max_scratch_bytes(int64_t n);
/* Bytes of a row of n elements; 0 when n is not a whole number of blocks. */
size_t type_row_bytes(uint32_t id, int64_t n);
/* The active kernel set and what its kernels are, for docs and --help. */
const char *type_simd_name(void);

float fp16_to_f32(uint16_t h);
uint16_t f32_to_fp16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);

/* Kernels (kernels/ref.c, kernels/avx2.c, kernels/avx512.c) */
void f32_to_f32_row(const void *src, float *dst, int64_t n);
void f16_to_f32_row(const void *src, float *dst, int64_t n);
void f32_to_f16_row(const float *src, void *dst, int64_t n);
void bf16_to_f32_row(const void *src, float *dst, int64_t n);
void f32_to_bf16_row(const float *src, void *dst, int64_t n);
void q8_0_to_f32_row(const void *src, float *dst, int64_t n);
void f32_to_q8_0_row(const float *src, void *dst, int64_t n);
void f32_copy_row(const float *src, void *dst, int64_t n);

/* Attention's probabilities . V summed as llama.cpp's F16 dot sums it (kernels/sums.c): position p
 * accumulates into lane p % lanes, then reduce adds lanes[lanes][n] into out[n]. */
typedef struct {
    int lanes;
    void (*reduce)(float *lanes, int n, float *out);
} lane_order;
/* llama.cpp's summation orders on a CPU of one instruction set: probabilities . V for one token and for
 * batches, and the softmax denominator (ggml_vec_soft_max_f32's sum of v[0..n)). */
typedef struct {
    lane_order f16_single, f16_batch;
    double (*softmax_sum)(const float *v, int64_t n);
} sum_orders;
extern const sum_orders SUMS_AVX2, SUMS_AVX512;

float exp_ref(float x);
void exp_row_ref(int64_t n, float *y, const float *x);
void swiglu_ref(int64_t n, float *y, const float *gate, const float *up);
void exp_avx2(int64_t n, float *y, const float *x);
void swiglu_avx2(int64_t n, float *y, const float *gate, const float *up);

struct hadamard_plan;

/* The kernels that are not per type, one row per kernel set (types.c). */
typedef struct {
    const sum_orders *sums;
    /* exp and SwiGLU (silu(gate) * up) with llama.cpp's vectorised expf (kernels/ref.c says how) */
    void (*exp)(int64_t n, float *y, const float *x);
    void (*swiglu)(int64_t n, float *y, const float *gate, const float *up);
    /* see lane_sums_f16_ref */
    void (*lane_sums_f16)(int64_t n, int lanes, int64_t n_pos, const float *w, const uint16_t *v, size_t v_stride,
                          float *out);
    tile_fn tile_f32;       /* 2x4 f32 tile for PVQ rows decoded to floats (dot_f32_ref per pair in scalar) */
    /* PVQ's int8 activations (kernels/pvq_codec.h: the same bytes in every set) */
    void (*pvq_quantize_x_q8)(const float *x, int64_t n, int8_t *xq, float *xs);
    void (*hadamard)(const struct hadamard_plan *pl, float *x); /* hadamard.h: the same bits in every set */
} isa_kernels;
const isa_kernels *isa_kernels_of(isa_id isa);
/* isa_kernels_of(isa_active()) */
const isa_kernels *isa_kernels_active(void);

/* Attention's weighted sum of V in lanes: out[l][0..n) for l < lanes = the fused multiply-adds
 * fma(w[p], v[p][0..n), .) from 0 over the positions p < n_pos with p % lanes == l, in increasing p
 * (v[p] = v + p * v_stride, fp16). The vector kernel holds a lane in registers over its positions. */
void lane_sums_f16_ref(int64_t n, int lanes, int64_t n_pos, const float *w, const uint16_t *v, size_t v_stride,
                       float *out);
void lane_sums_f16_avx2(int64_t n, int lanes, int64_t n_pos, const float *w, const uint16_t *v, size_t v_stride,
                        float *out);
void f32_to_f16_row_f16c(const float *src, void *dst, int64_t n);
void f16_to_f32_row_f16c(const void *src, float *dst, int64_t n);

void dot_f32_ref(int64_t n, const void *w, const void *x, float *out);
void dot_f16_ref(int64_t n, const void *w, const void *x, float *out);
void dot_bf16_ref(int64_t n, const void *w, const void *x, float *out);
void dot_q8_0_ref(int64_t n, const void *w, const void *x, float *out);

void dot_f32_avx2(int64_t n, const void *w, const void *x, float *out);
void dot_f32_avx2_batch(int64_t n, const void *w, const void *x, float *out);
void dot_f16_avx2(int64_t n, const void *w, const void *x, float *out);
void dot_f16_avx2_batch(int64_t n, const void *w, const void *x, float *out);
void tile_f16_avx2(int64_t n, const void *w, size_t w_stride, const void *x, size_t x_stride, float *out,
                   size_t out_stride);
void dot_bf16_avx2(int64_t n, const void *w, const void *x, float *out);
void dot_q8_0_avx2(int64_t n, const void *w, const void *x, float *out);
void dot_f16_avx512(int64_t n, const void *w, const void *x, float *out);
void dot_f16_avx512x4(int64_t n, const void *w, const void *x, float *out);
void tile_f16_avx512(int64_t n, const void *w, size_t w_stride, const void *x, size_t x_stride, float *out,
                     size_t out_stride);
void tile_q8_0_avx2(int64_t n, const void *w, size_t w_stride, const void *x, size_t x_stride, float *out,
                    size_t out_stride);
void tile_f32_avx2(int64_t n, const void *w, size_t w_stride, const void *x, size_t x_stride, float *out,
                   size_t out_stride);
void dot_q8_0_vnni(int64_t n, const void *w, const void *x, float *out);

#endif
