/* RoPE with a cos/sin table the host computed exactly as the CPU path does (so angles agree bit for
 * bit): llama rotates pairs (2i, 2i + 1), neox (qwen2) pairs (i, i + rope_dim / 2). */
#include "kernels.h"

__global__ void rope_kernel(float *v, const float *cs, int n_heads, int head_dim, int rope_dim, int neox)
{
    const int half = rope_dim / 2, t = blockIdx.x;
    const float *c = cs + (size_t)t * rope_dim;
    for (int e = threadIdx.x; e < n_heads * half; e += blockDim.x) {
        const int h = e / half, i = e % half;
        float *vh = v + ((size_t)t * n_heads + h) * head_dim;
        const int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
        const float x0 = vh[a], x1 = vh[b], co = c[2 * i], si = c[2 * i + 1];
        vh[a] = x0 * co - x1 * si;
        vh[b] = x0 * si + x1 * co;
    }
}

extern "C" cudaError_t k_rope(float *v, const float *cs, int T, int n_heads, int head_dim, int rope_dim, int neox)
{
    rope_kernel<<<T, 256>>>(v, cs, n_heads, head_dim, rope_dim, neox);
    return pvqk_launched("rope_kernel");
}
