/* The per-type traits table: one row per ggml type the runtime can read, its kernels per kernel set; and
 * the kernels that are not per type, one row per kernel set. */
#include "types.h"

#include "hadamard.h"
#include "kernels/pvq_codec.h"
#include "model.h"

#include <stdio.h>

/* [scalar, avx2, avx512] */
#define PER_ISA(scalar, avx2, avx512) {[ISA_SCALAR] = scalar, [ISA_AVX2] = avx2, [ISA_AVX512] = avx512}
/* one kernel serves every set */
#define ALL_ISAS(kernel) PER_ISA(kernel, kernel, kernel)

/* ---- the matrix side of the block types: their vec_type's from_float, then dot / dot_batch / tile */

static size_t dense_xq_bytes(uint32_t id, int64_t n) { return type_row_bytes(type_get(id)->vec_type, n); }

static void dense_quantize_x(const weight *w, const float *x, void *xq) {
    type_get(type_get(w->type)->vec_type)->from_float[isa_active()](x, xq, w->n_in);
}

static void dense_get_row(const weight *w, int64_t r, float *out) {
    type_get(w->type)->to_float[isa_active()](w->data + (size_t)r * w->row_bytes, out, w->n_in);
}

#define ROW_TILE 16 /* rows per pass over the batch's tokens */

static void dense_rows(const weight *w, int64_t r0, int64_t r1, int T, const float *x, const void *xq,
                       size_t xq_stride, float *out, int64_t out_stride, void *scratch) {
    (void)x, (void)scratch;
    const isa_id isa = isa_active();
    const type_traits *tt = type_get(w->type);
    const dot_fn dot = T == 1 ? tt->dot[isa] : tt->dot_batch[isa];
    const tile_fn tile = tt->tile[isa];
    for (int64_t row = r0; row < r1; row += ROW_TILE) {
        int64_t end = row + ROW_TILE < r1 ? row + ROW_TILE : r1;
        int t = 0;
        if (tile && (end - row) % TILE_ROWS == 0 && T > 1)
            for (; t + TILE_COLS <= T; t += TILE_COLS)
                for (int64_t j = row; j < end; j += TILE_ROWS)
                    tile(w->n_in, w->data + j * w->row_bytes, w->row_bytes, (const uint8_t *)xq + t * xq_stride,
                         xq_stride, out + (int64_t)t * out_stride + j, (size_t)out_stride);
        for (; t < T; t++)
            for (int64_t j = row; j < end; j++)
                dot(w->n_in, w->data + j * w->row_bytes, (const uint8_t *)xq + t * xq_stride, &out[t * out_stride + j]);
    }
}

#define DENSE_MATRIX .xq_bytes = dense_xq_bytes, .quantize_x = dense_quantize_x, .rows = dense_rows, \
    .batch_rows = TILE_ROWS, .get_row = dense_get_row

static const type_traits TRAITS[] = {
    {.id = T_F32, .name = "f32", .block = 1, .block_bytes = 4, .vec_type = T_F32,
     .to_float = ALL_ISAS(f32_to_f32_row),
     .from_float = ALL_ISAS(f32_copy_row),
     .dot = PER_ISA(dot_f32_ref, dot_f32_avx2, dot_f32_avx2),
     .dot_batch = PER_ISA(dot_f32_ref, dot_f32_avx2_batch, dot_f32_avx2_batch), DENSE_MATRIX},
    {.id = T_F16, .name = "f16", .block = 1, .block_bytes = 2, .vec_type = T_F16,
     .to_float = PER_ISA(f16_to_f32_row, f16_to_f32_row_f16c, f16_to_f32_row_f16c),
     .from_float = PER_ISA(f32_to_f16_row, f32_to_f16_row_f16c, f32_to_f16_row_f16c),
     .dot = PER_ISA(dot_f16_ref, dot_f16_avx2, dot_f16_avx512x4),
     .dot_batch = PER_ISA(dot_f16_ref, dot_f16_avx2_batch, dot_f16_avx512),
     .tile = PER_ISA(NULL, tile_f16_avx2, tile_f16_avx512), DENSE_MATRIX},
    {.id = T_BF16, .name = "bf16", .block = 1, .block_bytes = 2, .vec_type = T_BF16,
     .to_float = ALL_ISAS(bf16_to_f32_row),
     .from_float = ALL_ISAS(f32_to_bf16_row),
     .dot = PER_ISA(dot_bf16_ref, dot_bf16_avx2, dot_bf16_avx2),
     .dot_batch = PER_ISA(dot_bf16_ref, dot_bf16_avx2, dot_bf16_avx2), DENSE_MATRIX},
    {.id = T_Q8_0, .name = "q8_0", .block = QK8_0, .block_bytes = sizeof(block_q8_0), .vec_type = T_Q8_0,
     .to_float = ALL_ISAS(q8_0_to_f32_row),
     .from_float = ALL_ISAS(f32_to_q8_0_row),
     .dot = PER_ISA(dot_q8_0_ref, dot_q8_0_avx2, dot_q8_0_vnni),
     .dot_batch = PER_ISA(dot_q8_0_ref, dot_q8_0_avx2, dot_q8_0_vnni),
     .tile = PER_ISA(NULL, tile_q8_0_avx2, tile_q8_0_avx2), DENSE_MATRIX},
    /* Block 1 here: the real block (8 / gcd(W, 8) groups) depends on the id, and type_row_bytes asks the
     * codec. No per-set row kernels: every product needs the weight's codec context, so the matrix side
     * (pvq_matmul.c) is the whole row, and it picks the codec's kernels for the active set. */
    {.id = T_PVQ, .name = "pvq", .block = 1, .block_bytes = 0, .vec_type = T_F32,
     .xq_bytes = pvq_weight_xq_bytes, .quantize_x = pvq_weight_quantize_x, .rows = pvq_weight_rows,
     .batch_rows = PVQ_TILE_ROWS, .scratch_bytes = pvq_tile_bytes, .get_row = pvq_weight_get_row},
};
#define N_TYPES (sizeof(TRAITS) / sizeof(TRAITS[0]))

const type_traits *type_get(uint32_t id) {
    if (type_is_pvq(id)) {
        int D, K, b;
        if (pvq_type_params(id, &D, &K, &b, NULL, 0)) return NULL;
        id = T_PVQ;
    }
    for (size_t i = 0; i < N_TYPES; i++)
        if (TRAITS[i].id == id) return &TRAITS[i];
    return NULL;
}

size_t type_max_xq_bytes(int64_t n) {
    size_t most = 0;
    for (size_t i = 0; i < N_TYPES; i++) {
        size_t b = TRAITS[i].xq_bytes(TRAITS[i].id, n);
        most = b > most ? b : most;
    }
    return most;
}

size_t type_max_scratch_bytes(int64_t n) {
    size_t most = 0;
    for (size_t i = 0; i < N_TYPES; i++) {
        size_t b = TRAITS[i].scratch_bytes ? TRAITS[i].scratch_bytes(n) : 0;
        most = b > most ? b : most;
    }
    return most;
}

size_t type_row_bytes(uint32_t id, int64_t n) {
    const type_traits *t = type_get(id);
    if (t && t->id == T_PVQ) return pvq_type_row_bytes(id, n);
    if (!t || n <= 0 || n % t->block) return 0;
    return (size_t)(n / t->block) * t->block_bytes;
}

const char *type_simd_name(void) {
    static const char *const NAMES[ISA_COUNT] = {
        [ISA_SCALAR] = "scalar (PVQ with int8 activations)",
        [ISA_AVX2] = "avx2: AVX2+FMA+F16C (PVQ AVX2, int8 activations)",
        [ISA_AVX512] = "avx512: AVX-512 F16 dots, AVX512-VNNI Q8_0, PVQ AVX-512 VBMI+VNNI (int8 activations)",
    };
    return NAMES[isa_active()];
}

static void tile_f32_ref(int64_t n, const void *w, size_t w_stride, const void *x, size_t x_stride, float *out,
                         size_t out_stride) {
    for (int r = 0; r < TILE_ROWS; r++)
        for (int t = 0; t < TILE_COLS; t++)
            dot_f32_ref(n, (const uint8_t *)w + r * w_stride, (const uint8_t *)x + t * x_stride, &out[t * out_stride + r]);
}

/* The scalar set follows llama.cpp's AVX2 orders (any fixed order would do; these keep one set of
 * reference sums for the tests). */
static const isa_kernels KERNELS[ISA_COUNT] = {
    [ISA_SCALAR] = {.sums = &SUMS_AVX2, .exp = exp_row_ref, .swiglu = swiglu_ref, .lane_sums_f16 = lane_sums_f16_ref,
                    .tile_f32 = tile_f32_ref, .pvq_quantize_x_q8 = pvq_quantize_x_q8, .hadamard = hadamard_ref},
    [ISA_AVX2] = {.sums = &SUMS_AVX2, .exp = exp_avx2, .swiglu = swiglu_avx2, .lane_sums_f16 = lane_sums_f16_avx2,
                  .tile_f32 = tile_f32_avx2, .pvq_quantize_x_q8 = pvq_quantize_x_q8_avx2, .hadamard = hadamard_avx2},
    [ISA_AVX512] = {.sums = &SUMS_AVX512, .exp = exp_avx2, .swiglu = swiglu_avx2,
                    .lane_sums_f16 = lane_sums_f16_avx2, .tile_f32 = tile_f32_avx2,
                    .pvq_quantize_x_q8 = pvq_quantize_x_q8_avx2, .hadamard = hadamard_avx2},
};

const isa_kernels *isa_kernels_of(isa_id isa) { return &KERNELS[isa]; }
const isa_kernels *isa_kernels_active(void) { return &KERNELS[isa_active()]; }
