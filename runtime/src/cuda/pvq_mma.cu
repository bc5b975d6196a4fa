/* Prefill (T > 1) on tensor cores.  A block owns a tile of 64 weight rows x 64 tokens; per step of 64
 * columns it decodes the weight tile to fp16 in shared memory (decode.h, one group per thread-step),
 * converts the activation tile to fp16 (each token divided by its power-of-two scale, pvqd_tile_scale,
 * so that large activations cannot overflow fp16), and its 4 warps multiply with WMMA 16x16x16 (fp32 accumulate).
 * Decoding in the tile instead of dequantizing to a global fp16 copy for a GEMM library: the weights
 * are read once per 64 tokens in their packed size, no fp16 copy of a whole matrix is written and read
 * back, and the toolkit needs no cuBLAS (the build machines carry only cudart). */
#include "common.cuh"
#include "kernels.h"
#include "plan.h"

#include <mma.h>

using namespace nvcuda;

__global__ void __launch_bounds__(32 * PVQ_MMA_WARPS)
pvq_mma_kernel(pvqd_tables t, const uint8_t *__restrict__ data, const float *__restrict__ row_scales, int64_t rows,
               int64_t n, size_t row_bytes, const float *__restrict__ x, const float *__restrict__ tok_scale, int T,
               float *__restrict__ y)
{
    extern __shared__ __align__(32) unsigned char smem[];
    __half *ws = (__half *)smem;                               /* [ROWS][K] */
    __half *xs = ws + PVQ_MMA_ROWS * PVQ_MMA_K;                /* [TOKENS][K] */
    float *os = (float *)(xs + PVQ_MMA_TOKENS * PVQ_MMA_K);   /* [ROWS][TOKENS] */
    const int64_t r0 = (int64_t)blockIdx.x * PVQ_MMA_ROWS;
    const int t0 = blockIdx.y * PVQ_MMA_TOKENS, warp = threadIdx.x >> 5, D = t.D, W = t.field_bits;
    const int groups_per_row = PVQ_MMA_K / D;
    const uint32_t *words = (const uint32_t *)data;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[PVQ_MMA_TOKENS / 16];
    for (int j = 0; j < PVQ_MMA_TOKENS / 16; j++) wmma::fill_fragment(acc[j], 0.0f);
    for (int64_t k0 = 0; k0 < n; k0 += PVQ_MMA_K) {
        for (int i = threadIdx.x; i < PVQ_MMA_ROWS * groups_per_row; i += blockDim.x) {
            const int r = i / groups_per_row, gl = i % groups_per_row;
            __half *o = ws + r * PVQ_MMA_K + gl * D;
            if (r0 + r >= rows) {
                for (int e = 0; e < D; e++) o[e] = __float2half(0.0f);
                continue;
            }
            const uint64_t bit = (uint64_t)(r0 + r) * row_bytes * 8 + (uint64_t)(k0 / D + gl) * W;
            const uint64_t f = pvqd_field(words + (bit >> 5), (uint32_t)(bit & 31), W);
            const float scale = row_scales[r0 + r];
            if (t.fast) {
                uint32_t lo, hi;
                const float s = pvqd_group8(&t, f, scale, &lo, &hi);
                for (int e = 0; e < 4; e++) {
                    o[e] = __float2half((float)pvqd_coord(lo, e) * s);
                    o[4 + e] = __float2half((float)pvqd_coord(hi, e) * s);
                }
            } else {
                int32_t yv[PVQD_MAX_D];
                const float s = pvqd_group(&t, f, scale, yv);
                for (int e = 0; e < D; e++) o[e] = __float2half((float)yv[e] * s);
            }
        }
        for (int i = threadIdx.x; i < PVQ_MMA_TOKENS * PVQ_MMA_K; i += blockDim.x) {
            const int tt = i / PVQ_MMA_K, c = i % PVQ_MMA_K;
            xs[i] = __float2half(t0 + tt < T ? x[(size_t)(t0 + tt) * n + k0 + c] / tok_scale[t0 + tt] : 0.0f);
        }
        __syncthreads();
        for (int kk = 0; kk < PVQ_MMA_K; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
            wmma::load_matrix_sync(a, ws + warp * 16 * PVQ_MMA_K + kk, PVQ_MMA_K);
            for (int j = 0; j < PVQ_MMA_TOKENS / 16; j++) {
                /* B = X^T: element (k, token) at xs[token * K + k], i.e. column-major */
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> b;
                wmma::load_matrix_sync(b, xs + j * 16 * PVQ_MMA_K + kk, PVQ_MMA_K);
                wmma::mma_sync(acc[j], a, b, acc[j]);
            }
        }
        __syncthreads();
    }
    for (int j = 0; j < PVQ_MMA_TOKENS / 16; j++)
        wmma::store_matrix_sync(os + warp * 16 * PVQ_MMA_TOKENS + j * 16, acc[j], PVQ_MMA_TOKENS, wmma::mem_row_major);
    __syncthreads();
    for (int i = threadIdx.x; i < PVQ_MMA_ROWS * PVQ_MMA_TOKENS; i += blockDim.x) {
        const int r = i % PVQ_MMA_ROWS, tt = i / PVQ_MMA_ROWS;
        if (r0 + r < rows && t0 + tt < T) y[(size_t)(t0 + tt) * rows + r0 + r] = os[r * PVQ_MMA_TOKENS + tt] * tok_scale[t0 + tt];
    }
}

/* scale[t] = pvqd_tile_scale(max |x[t]|), one block per token. */
__global__ void tile_scale_kernel(const float *__restrict__ x, int64_t n, float *__restrict__ scale)
{
    __shared__ float scratch[32];
    const float *xt = x + (size_t)blockIdx.x * n;
    float amax = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) amax = fmaxf(amax, fabsf(xt[i]));
    amax = block_reduce(amax, op_max(), scratch);
    if (threadIdx.x == 0) scale[blockIdx.x] = pvqd_tile_scale(amax);
}

extern "C" cudaError_t pvqk_matmul_mma(const cuda_weight *w, const float *x, int T, float *y, float *scratch)
{
    const pvq_mma_plan p = pvq_mma_plan_make(w->tables.D, w->n_in, w->n_out, T);
    if (!p.usable) return cudaErrorInvalidValue;
    tile_scale_kernel<<<T, 256>>>(x, w->n_in, scratch);
    cudaError_t e = pvqk_launched("tile_scale_kernel");
    if (e) return e;
    pvq_mma_kernel<<<dim3(p.grid_x, p.grid_y), p.block, p.smem_bytes>>>(w->tables, w->data, w->row_scales, w->n_out,
                                                                       w->n_in, w->row_bytes, x, scratch, T, y);
    return pvqk_launched("pvq_mma_kernel");
}
