/* The online Hadamard transform before ffn_down (docs/rotation.md), out = H x per token, with the
 * token's n = h * p values in shared memory: Sylvester butterflies on each block of p (strides
 * ascending), then out[a p + j] = scale * sum_a' B[a][a'] f[a' p + j] (B, not B^T).  The mixing costs
 * h n operations per token, so for a few tokens it is spread over blocks of HADAMARD_SLICE outputs,
 * each of which redoes the cheap butterflies (n log2(p) / 2) for itself; hence out != x. */
#include "kernels.h"

#define HADAMARD_SLICE 1024

__global__ void hadamard_kernel(const float *x, float *out, int h, int p, float scale, const int8_t *base)
{
    extern __shared__ float f[];
    const int n = h * p, e0 = blockIdx.y * HADAMARD_SLICE, e1 = h == 1 ? n : min(n, e0 + HADAMARD_SLICE);
    const float *xt = x + (size_t)blockIdx.x * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x) f[i] = xt[i];
    __syncthreads();
    for (int len = 1; len < p; len <<= 1) {
        for (int pair = threadIdx.x; pair < n / 2; pair += blockDim.x) {
            const int a = pair / (p / 2), k = pair % (p / 2);
            const int i = a * p + (k / len) * 2 * len + k % len;
            const float u = f[i], v = f[i + len];
            f[i] = u + v;
            f[i + len] = u - v;
        }
        __syncthreads();
    }
    float *ot = out + (size_t)blockIdx.x * n;
    for (int e = e0 + threadIdx.x; e < e1; e += blockDim.x) {
        const int a = e / p, j = e % p;
        float acc = 0.0f;
        for (int b = 0; b < h; b++) {
            const int8_t s = __ldg(base + a * h + b);
            if (s > 0) acc += f[b * p + j];
            else if (s < 0) acc -= f[b * p + j];
        }
        ot[e] = acc * scale;
    }
}

extern "C" cudaError_t k_hadamard_prepare(int n)
{
    return pvqk_raise_smem_limit((const void *)hadamard_kernel, (size_t)n * sizeof(float));
}

extern "C" cudaError_t k_hadamard(const float *x, float *out, int T, int h, int p, float scale, const int8_t *base)
{
    const int n = h * p;
    const size_t smem = (size_t)n * sizeof(float);
    const unsigned slices = h == 1 ? 1u : (unsigned)((n + HADAMARD_SLICE - 1) / HADAMARD_SLICE);
    hadamard_kernel<<<dim3(T, slices), 1024, smem>>>(x, out, h, p, scale, base);
    return pvqk_launched("hadamard_kernel");
}
