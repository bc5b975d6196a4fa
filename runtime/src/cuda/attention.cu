/* Attention over an fp16 KV cache, one block per (head, token), with the CPU path's roundings: the
 * query rounded to fp16 before q.k, the probabilities rounded to fp16 before they weight V. */
#include "common.cuh"
#include "kernels.h"
#include "plan.h"

__global__ void kv_store_kernel(const float *k, const float *v, int kv_dim, const int *n_past, uint16_t *kc, uint16_t *vc)
{
    const int t = blockIdx.x;
    const size_t dst = ((size_t)*n_past + t) * kv_dim;
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
        kc[dst + i] = float_to_half_bits(k[(size_t)t * kv_dim + i]);
        vc[dst + i] = float_to_half_bits(v[(size_t)t * kv_dim + i]);
    }
}

extern "C" cudaError_t k_kv_store(const float *k, const float *v, int T, int kv_dim, const int *n_past,
                                  uint16_t *k_cache, uint16_t *v_cache)
{
    kv_store_kernel<<<T, 256>>>(k, v, kv_dim, n_past, k_cache, v_cache);
    return pvqk_launched("kv_store_kernel");
}

__global__ void __launch_bounds__(PVQ_ATTN_THREADS)
attention_kernel(const float *q, const uint16_t *kc, const uint16_t *vc, const int *n_past, int n_head, int n_head_kv,
                 int head_dim, int n_ctx, float *out)
{
    extern __shared__ float sm[];
    __shared__ float scratch[32];
    __shared__ double scratch_d[32];
    float *score = sm;                                       /* [n_ctx] */
    uint16_t *p16 = (uint16_t *)(score + n_ctx);             /* [n_ctx] */
    uint16_t *q16 = p16 + n_ctx;                             /* [head_dim] */
    const int h = blockIdx.x, t = blockIdx.y, n_kv = *n_past + t + 1, hd = head_dim;
    const int kv_dim = n_head_kv * hd, dim = n_head * hd, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const size_t koff = (size_t)(h / (n_head / n_head_kv)) * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) q16[d] = float_to_half_bits(q[(size_t)t * dim + h * hd + d]);
    __syncthreads();
    const float scale = 1.0f / sqrtf((float)hd);
    for (int p = warp; p < n_kv; p += blockDim.x >> 5) {
        float s = 0.0f;
        for (int d = lane; d < hd; d += 32)
            s += half_bits_to_float(kc[(size_t)p * kv_dim + koff + d]) * half_bits_to_float(q16[d]);
        s = warp_sum(s);
        if (lane == 0) score[p] = s * scale;
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int p = threadIdx.x; p < n_kv; p += blockDim.x) mx = fmaxf(mx, score[p]);
    mx = block_reduce(mx, op_max(), scratch);
    double sum = 0;
    for (int p = threadIdx.x; p < n_kv; p += blockDim.x) {
        const float e = expf(score[p] - mx);
        score[p] = e;
        sum += e;
    }
    sum = block_reduce(sum, op_add(), scratch_d);
    const float inv = (float)(1.0 / sum);
    for (int p = threadIdx.x; p < n_kv; p += blockDim.x) p16[p] = float_to_half_bits(score[p] * inv);
    __syncthreads();
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0.0f;
        for (int p = 0; p < n_kv; p++)
            acc += half_bits_to_float(p16[p]) * half_bits_to_float(vc[(size_t)p * kv_dim + koff + d]);
        out[(size_t)t * dim + h * hd + d] = acc;
    }
}

extern "C" cudaError_t k_attention_prepare(int n_ctx, int head_dim)
{
    return pvqk_raise_smem_limit((const void *)attention_kernel, pvq_attention_smem_bytes(n_ctx, head_dim));
}

extern "C" cudaError_t k_attention(const float *q, const uint16_t *k_cache, const uint16_t *v_cache, int T,
                                   const int *n_past, int n_head, int n_head_kv, int head_dim, int n_ctx, float *out)
{
    const size_t smem = pvq_attention_smem_bytes(n_ctx, head_dim);
    attention_kernel<<<dim3(n_head, T), PVQ_ATTN_THREADS, smem>>>(q, k_cache, v_cache, n_past, n_head, n_head_kv,
                                                                  head_dim, n_ctx, out);
    return pvqk_launched("attention_kernel");
}
