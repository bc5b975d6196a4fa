/* C launchers of the CUDA kernels (one .cu file per job).  Every pointer is device memory; every
 * launcher runs on the default stream and returns pvqk_launched's cudaError_t (the launch's error,
 * without synchronising unless PVQ_CUDA_SYNC=1).  Activations are float32, row-major [T][n]. */
#ifndef PVQ_CUDA_KERNELS_H
#define PVQ_CUDA_KERNELS_H

#include "decode.h"

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A weight matrix on the device: n_out rows of row_bytes, the allocation padded by 16 bytes (the PVQ
 * kernels read whole words past a row's end).  PVQ: row scales as float32, tables bound to device memory. */
typedef struct {
    uint32_t type;            /* ggml type id or a PVQ id */
    int pvq;
    int64_t n_in, n_out;
    size_t row_bytes;
    const uint8_t *data;
    const float *row_scales;  /* PVQ only */
    pvqd_tables tables;       /* PVQ only */
    unsigned gemv_blocks[2];  /* PVQ: the GEMV's grid cap for the fast [0] and generic [1] path (pvqk_prepare) */
} cuda_weight;

/* launch.c: the check after each kernel launch: cudaGetLastError, and with PVQ_CUDA_SYNC=1 (any value
 * but 0) a cudaDeviceSynchronize, so that a fault is reported by the launch of the kernel that caused
 * it; a failure records the kernel's name for pvqk_fail.  pvqk_sync_mode: whether that mode is on
 * (decode steps then run without a CUDA graph, which cannot synchronise inside its capture). */
cudaError_t pvqk_launched(const char *kernel);
int pvqk_sync_mode(void);
/* launch.c: err = "CUDA: <what>: <CUDA's message>", plus the kernel that failed, if one did since the
 * last message; returns -1. */
int pvqk_fail(char *err, size_t err_len, const char *what, cudaError_t e);
/* launch.c: raises a kernel's dynamic shared-memory limit to bytes; never lowers it. */
cudaError_t pvqk_raise_smem_limit(const void *kernel, size_t bytes);

/* pvq_gemv.cu: once per PVQ weight, before pvqk_gemv: the GEMV's resident-block grid caps (occupancy
 * API) and its shared-memory limit, so that no launch queries the device. */
cudaError_t pvqk_prepare(cuda_weight *w);
/* pvq_gemv.cu: y[T][n_out] = x[T][n_in] W^T, one GEMV per token (batch-1 decode path).  The D == 8
 * fast path first quantizes x to int8 per 128 values (as the CPU kernels do) into scratch, device
 * memory of pvqk_q8_scratch_bytes(n_in) bytes.  generic: take the enumeration path with float32 x even
 * when the D == 8 tables exist (the device reference). */
size_t pvqk_q8_scratch_bytes(int64_t n);
cudaError_t pvqk_gemv(const cuda_weight *w, const float *x, int T, float *y, int generic, void *scratch);
/* pvq_gemv.cu: rows row_ids[0..n) of W as float32 into out[n][n_in] (embedding rows, the self test). */
cudaError_t pvqk_dequantize_rows(const cuda_weight *w, const int32_t *row_ids, int n, float *out);
/* pvq_mma.cu: y[T][n_out] = x[T][n_in] W^T on tensor cores; cudaErrorInvalidValue when the tile plan
 * does not apply (pvq_mma_plan_make), the caller uses pvqk_gemv then.  Each token's activations enter
 * the fp16 tiles divided by a power of two (pvqd_tile_scale) kept in scratch (T floats), so that no
 * magnitude overflows fp16. */
cudaError_t pvqk_matmul_mma(const cuda_weight *w, const float *x, int T, float *y, float *scratch);

/* dense.cu: F32 / F16 / BF16 / Q8_0 weights.  cudaErrorInvalidValue for another type.  Q8_0 weights
 * meet x quantized as the CPU quantizes it (f32_to_q8_0_row, densek_quantize_q8_0) into scratch, device
 * memory of densek_q8_0_scratch_bytes(n_in, T) bytes (unused for the other types). */
size_t densek_q8_0_scratch_bytes(int64_t n, int T);
cudaError_t densek_quantize_q8_0(const float *x, int T, int64_t n, void *out);
cudaError_t densek_gemv(const cuda_weight *w, const float *x, int T, float *y, void *scratch);
cudaError_t densek_rows(const cuda_weight *w, const int32_t *row_ids, int n, float *out);

/* norm.cu: out[t] = x[t] / rms(x[t]) * g (squares summed in double, as the CPU path). */
cudaError_t k_rmsnorm(const float *x, const float *g, int T, int n, float eps, float *out);
/* rope.cu: rotates the first rope_dim dims of each of n_heads heads of v[T][n_heads * head_dim] with
 * cs[T][rope_dim / 2][cos, sin]; neox pairs (i, i + rope_dim/2), else (2i, 2i + 1). */
cudaError_t k_rope(float *v, const float *cs, int T, int n_heads, int head_dim, int rope_dim, int neox);
/* attention.cu: appends k, v (T x kv_dim) to an fp16 cache at position *n_past, then the causal
 * attention of q[T][n_head * head_dim] over positions 0 .. *n_past + t into out.  n_past is device
 * memory, so that a captured decode step (CUDA graph) replays at every position.  k_attention_prepare
 * once per context size, before any launch (it raises the kernel's shared-memory limit if needed). */
cudaError_t k_attention_prepare(int n_ctx, int head_dim);
cudaError_t k_kv_store(const float *k, const float *v, int T, int kv_dim, const int *n_past, uint16_t *k_cache,
                       uint16_t *v_cache);
cudaError_t k_attention(const float *q, const uint16_t *k_cache, const uint16_t *v_cache, int T, const int *n_past,
                        int n_head, int n_head_kv, int head_dim, int n_ctx, float *out);
/* ffn.cu: gate = silu(gate) * up; x += y; x[t] += b (biases). */
cudaError_t k_swiglu(float *gate, const float *up, size_t n);
cudaError_t k_add(float *x, const float *y, size_t n);
cudaError_t k_add_bias(float *x, const float *b, int T, int n);
/* hadamard.cu: out[t] = H x[t], H = scale (B (x) H_p) (docs/rotation.md), base: h x h int8 on the device;
 * out must not overlap x.  k_hadamard_prepare once per n = h * p, before any launch. */
cudaError_t k_hadamard_prepare(int n);
cudaError_t k_hadamard(const float *x, float *out, int T, int h, int p, float scale, const int8_t *base);
/* fill.cu: random valid PVQ rows (benchmarks and the self test): uniform points, tables bound to device memory. */
cudaError_t pvqk_fill_random(uint8_t *data, int64_t rows, size_t row_bytes, const pvqd_tables *t, int block_groups,
                             uint64_t n_points, uint64_t seed);
/* fill.cu: n uniform values in [lo, hi) as float32 or as fp16 bits. */
cudaError_t k_fill_uniform_f32(float *out, size_t n, float lo, float hi, uint64_t seed);
cudaError_t k_fill_uniform_f16(uint16_t *out, size_t n, float lo, float hi, uint64_t seed);

/* forward.c: a weight of a model on the device (for the self test): which 0..6 = q, k, v, o, gate,
 * up, down of a layer; which < 0: the output matrix. */
struct pvq_cuda_model;
const cuda_weight *pvq_cuda_model_weight(const struct pvq_cuda_model *g, int layer, int which);

#ifdef __cplusplus
}
#endif

#endif
