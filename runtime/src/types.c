/* The per-type traits table: one row per ggml type the runtime can read. */
#include "types.h"

#include "kernels/pvq_codec.h"

#include <pthread.h>
#include <stdio.h>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define SIMD(ref, avx2) avx2
#if defined(__AVX512F__)
#define F16_DOT dot_f16_avx512x4
#define F16_DOT_BATCH dot_f16_avx512
#define F16_TILE tile_f16_avx512
#else
#define F16_DOT dot_f16_avx2
#define F16_DOT_BATCH dot_f16_avx2_batch
#define F16_TILE tile_f16_avx2
#endif
#define TO_F16 f32_to_f16_row_f16c
#define EXP exp_avx2
#define SWIGLU swiglu_avx2
#define LANE_SUMS_F16 lane_sums_f16_avx2
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define Q8_DOT dot_q8_0_vnni
#define SIMD_NAME "AVX2+FMA+F16C, AVX-512 (F16), AVX512-VNNI (Q8_0)"
#else
#define Q8_DOT dot_q8_0_avx2
#define SIMD_NAME "AVX2+FMA+F16C"
#endif
#else
#define SIMD(ref, avx2) ref
#define F16_DOT dot_f16_ref
#define F16_DOT_BATCH dot_f16_ref
#define F16_TILE NULL
#define TO_F16 f32_to_f16_row
#define LANE_SUMS_F16 lane_sums_f16_ref
#define EXP exp_row_ref
#define SWIGLU swiglu_ref
#define Q8_DOT dot_q8_0_ref
#define SIMD_NAME "scalar"
#endif

static const type_traits TRAITS[] = {
    {T_F32, "f32", 1, 4, T_F32, f32_to_f32_row, f32_copy_row, dot_f32_ref, SIMD(dot_f32_ref, dot_f32_avx2),
     SIMD(dot_f32_ref, dot_f32_avx2_batch), NULL},
    {T_F16, "f16", 1, 2, T_F16, f16_to_f32_row, TO_F16, dot_f16_ref, F16_DOT, F16_DOT_BATCH, F16_TILE},
    {T_BF16, "bf16", 1, 2, T_BF16, bf16_to_f32_row, f32_to_bf16_row, dot_bf16_ref,
     SIMD(dot_bf16_ref, dot_bf16_avx2), SIMD(dot_bf16_ref, dot_bf16_avx2), NULL},
    {T_Q8_0, "q8_0", QK8_0, sizeof(block_q8_0), T_Q8_0, q8_0_to_f32_row, f32_to_q8_0_row, dot_q8_0_ref, Q8_DOT,
     Q8_DOT, SIMD(NULL, tile_q8_0_avx2)},
    /* Block 1 here: the real block (8 / gcd(W, 8) groups) depends on the id, and type_row_bytes asks the
     * codec. Activations stay f32 in the traits' sense; pvq_matmul.c quantizes them itself (int8 for
     * decode, f32 for batches). No generic kernels: every product needs the weight's codec. */
    {T_PVQ, "pvq", 1, 0, T_F32, NULL, NULL, NULL, NULL, NULL, NULL},
};

const type_traits *type_get(uint32_t id) {
    if (type_is_pvq(id)) {
        int D, K, b;
        if (pvq_type_params(id, &D, &K, &b, NULL, 0)) return NULL;
        id = T_PVQ;
    }
    for (size_t i = 0; i < sizeof(TRAITS) / sizeof(TRAITS[0]); i++)
        if (TRAITS[i].id == id) return &TRAITS[i];
    return NULL;
}

size_t type_row_bytes(uint32_t id, int64_t n) {
    const type_traits *t = type_get(id);
    if (t && t->id == T_PVQ) return pvq_type_row_bytes(id, n);
    if (!t || n <= 0 || n % t->block) return 0;
    return (size_t)(n / t->block) * t->block_bytes;
}

/* The PVQ kernels are chosen at run time (pvq_select_kernels), the others at build time. */
static char simd_name[160];
static void name_simd(void) {
    const char *pvq = pvq_avx512_supported() ? "AVX-512 VBMI+VNNI" : pvq_avx2_supported() ? "AVX2" : "scalar";
    snprintf(simd_name, sizeof simd_name, "%s; PVQ %s (int8 activations for decode)", SIMD_NAME, pvq);
}

const char *type_simd_name(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, name_simd);
    return simd_name;
}

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
const tile_fn tile_f32 = tile_f32_avx2;
#else
static void tile_f32_ref(int64_t n, const void *w, size_t w_stride, const void *x, size_t x_stride, float *out,
                         size_t out_stride) {
    for (int r = 0; r < TILE_ROWS; r++)
        for (int t = 0; t < TILE_COLS; t++)
            dot_f32_ref(n, (const uint8_t *)w + r * w_stride, (const uint8_t *)x + t * x_stride, &out[t * out_stride + r]);
}
const tile_fn tile_f32 = tile_f32_ref;
#endif

void vec_lane_sums_f16(int64_t n, int lanes, int64_t n_pos, const float *w, const uint16_t *v, size_t v_stride,
                       float *out) {
    LANE_SUMS_F16(n, lanes, n_pos, w, v, v_stride, out);
}
void vec_exp(int64_t n, float *y, const float *x) { EXP(n, y, x); }
void vec_swiglu(int64_t n, float *y, const float *gate, const float *up) { SWIGLU(n, y, gate, up); }
