/* GEMV of the ggml weight types the runtime reads (F32, F16, BF16, Q8_0): one warp per (row, token),
 * lanes over consecutive elements so a warp's loads are coalesced.  As on the CPU path, activations
 * meet F16 / BF16 weights rounded to that type; Q8_0 weights meet float32 activations (the CPU
 * quantizes them to Q8_0 blocks: a difference of the order of 1/254 of a block's largest value). */
#include "common.cuh"
#include "kernels.h"

#include <cuda_bf16.h>

enum { T_F32 = 0, T_F16 = 1, T_Q8_0 = 8, T_BF16 = 30 };
#define QK8_0 32
#define Q8_0_BYTES 34
#define DENSE_WARPS 4

/* Element i of a row as float. */
template <int TYPE> __device__ __forceinline__ float load_elem(const uint8_t *row, int64_t i)
{
    if (TYPE == T_F32) return __ldg((const float *)row + i);
    if (TYPE == T_F16) return half_bits_to_float(__ldg((const uint16_t *)row + i));
    if (TYPE == T_BF16) return __bfloat162float(__ushort_as_bfloat16(__ldg((const uint16_t *)row + i)));
    const uint8_t *blk = row + (i / QK8_0) * Q8_0_BYTES;   /* Q8_0: fp16 d, then 32 int8 */
    const uint16_t d = (uint16_t)(__ldg(blk) | __ldg(blk + 1) << 8);
    return half_bits_to_float(d) * (float)(int8_t)__ldg(blk + 2 + i % QK8_0);
}

/* An activation rounded to the weight type's vec_type where the CPU path rounds it. */
template <int TYPE> __device__ __forceinline__ float vec_round(float x)
{
    if (TYPE == T_F16) return __half2float(__float2half_rn(x));
    if (TYPE == T_BF16) return __bfloat162float(__float2bfloat16_rn(x));
    return x;
}

template <int TYPE>
__global__ void dense_gemv_kernel(const uint8_t *__restrict__ data, size_t row_bytes, int64_t rows, int64_t n,
                                  const float *__restrict__ x, float *__restrict__ y)
{
    const int lane = threadIdx.x & 31;
    const int64_t row = (int64_t)blockIdx.x * DENSE_WARPS + (threadIdx.x >> 5);
    if (row >= rows) return;
    const uint8_t *w = data + row * row_bytes;
    const float *xt = x + (size_t)blockIdx.y * n;
    float acc = 0.0f;
    for (int64_t i = lane; i < n; i += 32) acc += load_elem<TYPE>(w, i) * vec_round<TYPE>(__ldg(xt + i));
    acc = warp_sum(acc);
    if (lane == 0) y[(size_t)blockIdx.y * rows + row] = acc;
}

template <int TYPE>
__global__ void dense_rows_kernel(const uint8_t *data, size_t row_bytes, int64_t n, const int32_t *row_ids, float *out)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[(size_t)blockIdx.y * n + i] = load_elem<TYPE>(data + (size_t)row_ids[blockIdx.y] * row_bytes, i);
}

extern "C" cudaError_t densek_gemv(const cuda_weight *w, const float *x, int T, float *y)
{
    const dim3 grid((unsigned)((w->n_out + DENSE_WARPS - 1) / DENSE_WARPS), (unsigned)T), block(32 * DENSE_WARPS);
    switch (w->type) {
    case T_F32: dense_gemv_kernel<T_F32><<<grid, block>>>(w->data, w->row_bytes, w->n_out, w->n_in, x, y); break;
    case T_F16: dense_gemv_kernel<T_F16><<<grid, block>>>(w->data, w->row_bytes, w->n_out, w->n_in, x, y); break;
    case T_BF16: dense_gemv_kernel<T_BF16><<<grid, block>>>(w->data, w->row_bytes, w->n_out, w->n_in, x, y); break;
    case T_Q8_0: dense_gemv_kernel<T_Q8_0><<<grid, block>>>(w->data, w->row_bytes, w->n_out, w->n_in, x, y); break;
    default: return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

extern "C" cudaError_t densek_rows(const cuda_weight *w, const int32_t *row_ids, int n, float *out)
{
    const dim3 grid((unsigned)((w->n_in + 255) / 256), (unsigned)n);
    switch (w->type) {
    case T_F32: dense_rows_kernel<T_F32><<<grid, 256>>>(w->data, w->row_bytes, w->n_in, row_ids, out); break;
    case T_F16: dense_rows_kernel<T_F16><<<grid, 256>>>(w->data, w->row_bytes, w->n_in, row_ids, out); break;
    case T_BF16: dense_rows_kernel<T_BF16><<<grid, 256>>>(w->data, w->row_bytes, w->n_in, row_ids, out); break;
    case T_Q8_0: dense_rows_kernel<T_Q8_0><<<grid, 256>>>(w->data, w->row_bytes, w->n_in, row_ids, out); break;
    default: return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}
