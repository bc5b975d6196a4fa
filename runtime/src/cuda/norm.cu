/* RMSNorm, one block per token: squares summed in double as the CPU path does, then
 * out = x * (1 / sqrtf(mean + eps)) * g. */
#include "common.cuh"
#include "kernels.h"

__global__ void rmsnorm_kernel(const float *x, const float *g, int n, float eps, float *out)
{
    __shared__ double scratch[32];
    const float *xt = x + (size_t)blockIdx.x * n;
    double ss = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += (double)(xt[i] * xt[i]);
    ss = block_reduce(ss, op_add(), scratch);
    const float scale = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[(size_t)blockIdx.x * n + i] = xt[i] * scale * g[i];
}

extern "C" cudaError_t k_rmsnorm(const float *x, const float *g, int T, int n, float eps, float *out)
{
    rmsnorm_kernel<<<T, 256>>>(x, g, n, eps, out);
    return pvqk_launched("rmsnorm_kernel");
}
