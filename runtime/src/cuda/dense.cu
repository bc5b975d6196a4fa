/* GEMV of the ggml weight types the runtime reads (F32, F16, BF16, Q8_0): one warp per (row, token),
 * lanes over consecutive elements so a warp's loads are coalesced.  As on the CPU path, activations
 * meet F16 / BF16 weights rounded to that type, and Q8_0 weights as Q8_0 blocks made by the CPU's rule
 * (f32_to_q8_0_row), the same bytes, with the CPU's integer dot per block. */
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

/* x[T][n] as Q8_0 blocks, the CPU's f32_to_q8_0_row: per 32 values d = fp16(amax / 127) and
 * q = x * (127 / amax) rounded to nearest even (all 0 when amax is 0).  One warp per block. */
__global__ void quantize_q8_0_kernel(const float *__restrict__ x, int64_t blocks, uint8_t *__restrict__ out)
{
    const int64_t b = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (b >= blocks) return;
    const float v = x[b * QK8_0 + lane];
    const float amax = warp_max(fmaxf(0.0f, fabsf(v)));   /* fmaxf drops NaN, as the CPU's loop does */
    uint8_t *o = out + b * Q8_0_BYTES;
    o[2 + lane] = (uint8_t)pvqd_q8(v, pvqd_q8_inv(amax));
    if (lane == 0) {
        const uint16_t d = float_to_half_bits(amax / 127.0f);
        o[0] = (uint8_t)d, o[1] = (uint8_t)(d >> 8);
    }
}

/* Q8_0 weights times Q8_0 activations: 8 lanes per block, 4 values each (16-bit loads: the int8s of a
 * 34-byte block are 2-byte aligned), the block's integer dot summed over its 8 lanes, then
 * d_w * d_x * dot in float as dot_q8_0_ref has it. */
__global__ void q8_0_gemv_kernel(const uint8_t *__restrict__ data, size_t row_bytes, int64_t rows, int64_t blocks,
                                 const uint8_t *__restrict__ xq, float *__restrict__ y)
{
    const int lane = threadIdx.x & 31, sub = lane & 7;
    const int64_t row = (int64_t)blockIdx.x * DENSE_WARPS + (threadIdx.x >> 5);
    if (row >= rows) return;
    const uint8_t *w = data + row * row_bytes, *xt = xq + (size_t)blockIdx.y * blocks * Q8_0_BYTES;
    float acc = 0.0f;
    for (int64_t b0 = 0; b0 < blocks; b0 += 4) {
        const int64_t b = b0 + (lane >> 3);
        int dot = 0;
        const uint16_t *wb = (const uint16_t *)(w + b * Q8_0_BYTES), *xb = (const uint16_t *)(xt + b * Q8_0_BYTES);
        if (b < blocks) {
            const unsigned wv = __ldg(wb + 1 + 2 * sub) | (unsigned)__ldg(wb + 2 + 2 * sub) << 16;
            const unsigned xv = __ldg(xb + 1 + 2 * sub) | (unsigned)__ldg(xb + 2 + 2 * sub) << 16;
            dot = __dp4a((int)wv, (int)xv, 0);
        }
        for (int o = 4; o; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        if (b < blocks && sub == 0)
            acc += half_bits_to_float(__ldg(wb)) * half_bits_to_float(__ldg(xb)) * (float)dot;
    }
    acc = warp_sum(acc);
    if (lane == 0) y[(size_t)blockIdx.y * rows + row] = acc;
}

extern "C" size_t densek_q8_0_scratch_bytes(int64_t n, int T) { return (size_t)T * (size_t)(n / QK8_0) * Q8_0_BYTES; }

extern "C" cudaError_t densek_quantize_q8_0(const float *x, int T, int64_t n, void *out)
{
    const int64_t blocks = (int64_t)T * (n / QK8_0);
    quantize_q8_0_kernel<<<(unsigned)((blocks + 7) / 8), 256>>>(x, blocks, (uint8_t *)out);
    return pvqk_launched("quantize_q8_0_kernel");
}

template <int TYPE>
__global__ void dense_rows_kernel(const uint8_t *data, size_t row_bytes, int64_t n, const int32_t *row_ids, float *out)
{
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[(size_t)blockIdx.y * n + i] = load_elem<TYPE>(data + (size_t)row_ids[blockIdx.y] * row_bytes, i);
}

extern "C" cudaError_t densek_gemv(const cuda_weight *w, const float *x, int T, float *y, void *scratch)
{
    const dim3 grid((unsigned)((w->n_out + DENSE_WARPS - 1) / DENSE_WARPS), (unsigned)T), block(32 * DENSE_WARPS);
    switch (w->type) {
    case T_F32: dense_gemv_kernel<T_F32><<<grid, block>>>(w->data, w->row_bytes, w->n_out, w->n_in, x, y); break;
    case T_F16: dense_gemv_kernel<T_F16><<<grid, block>>>(w->data, w->row_bytes, w->n_out, w->n_in, x, y); break;
    case T_BF16: dense_gemv_kernel<T_BF16><<<grid, block>>>(w->data, w->row_bytes, w->n_out, w->n_in, x, y); break;
    case T_Q8_0: {
        const cudaError_t e = densek_quantize_q8_0(x, T, w->n_in, scratch);
        if (e) return e;
        q8_0_gemv_kernel<<<grid, block>>>(w->data, w->row_bytes, w->n_out, w->n_in / QK8_0, (const uint8_t *)scratch, y);
        return pvqk_launched("q8_0_gemv_kernel");
    }
    default: return cudaErrorInvalidValue;
    }
    return pvqk_launched("dense_gemv_kernel");
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
    return pvqk_launched("dense_rows_kernel");
}
