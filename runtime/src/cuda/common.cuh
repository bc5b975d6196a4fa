/* Small device helpers shared by the kernels. */
#ifndef PVQ_CUDA_COMMON_CUH
#define PVQ_CUDA_COMMON_CUH

#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v)
{
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum or max over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it. */
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T *scratch32)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int o = 16; o; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();                      /* scratch32 may still be read by a previous call */
    if (lane == 0) scratch32[warp] = v;
    __syncthreads();
    v = scratch32[0];
    for (int i = 1; i < nw; i++) v = op(v, scratch32[i]);
    return v;
}

struct op_add { template <typename T> __device__ T operator()(T a, T b) const { return a + b; } };
struct op_max { __device__ float operator()(float a, float b) const { return fmaxf(a, b); } };

__device__ __forceinline__ float half_bits_to_float(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ uint16_t float_to_half_bits(float f) { return __half_as_ushort(__float2half_rn(f)); }

#endif
