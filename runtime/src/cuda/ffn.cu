/* Element-wise steps of a block: SwiGLU, the residual add, bias adds. */
#include "kernels.h"

__global__ void swiglu_kernel(float *gate, const float *up, size_t n)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

__global__ void add_kernel(float *x, const float *y, size_t n)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

__global__ void add_bias_kernel(float *x, const float *b, int n)
{
    for (int i = threadIdx.x; i < n; i += blockDim.x) x[(size_t)blockIdx.x * n + i] += b[i];
}

extern "C" cudaError_t k_swiglu(float *gate, const float *up, size_t n)
{
    swiglu_kernel<<<(unsigned)((n + 255) / 256), 256>>>(gate, up, n);
    return pvqk_launched("swiglu_kernel");
}

extern "C" cudaError_t k_add(float *x, const float *y, size_t n)
{
    add_kernel<<<(unsigned)((n + 255) / 256), 256>>>(x, y, n);
    return pvqk_launched("add_kernel");
}

extern "C" cudaError_t k_add_bias(float *x, const float *b, int T, int n)
{
    add_bias_kernel<<<T, 256>>>(x, b, n);
    return pvqk_launched("add_bias_kernel");
}
