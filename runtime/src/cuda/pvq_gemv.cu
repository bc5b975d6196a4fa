/* PVQ decode-GEMV for batch 1: each warp owns a row; it stages the words of a chunk of 256 groups in
 * its slice of shared memory with coalesced loads, each lane decodes 8 groups from there (decode.h)
 * and dots them with x, and a warp sum gives the row's output.  The D == 8 tables (cum, n2, bases,
 * at most 4 KB) are copied to shared memory per block; lut4 stays in global memory, where it is read
 * through the L1/L2 caches (120 KB for K = 14, 2 MB for K = 29). */
#include "common.cuh"
#include "kernels.h"
#include "plan.h"

#define CHUNK (32 * PVQ_GEMV_GROUPS_PER_LANE)

template <bool FAST>
__global__ void __launch_bounds__(32 * PVQ_GEMV_WARPS)
pvq_gemv_kernel(pvqd_tables t, const uint8_t *__restrict__ data, const float *__restrict__ row_scales, int64_t rows,
                int64_t n, size_t row_bytes, const float *__restrict__ x, float *__restrict__ y, unsigned window_words)
{
    extern __shared__ uint32_t smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    uint32_t *win = smem + warp * window_words;
    if (FAST) {
        uint32_t *tab = smem + PVQ_GEMV_WARPS * window_words;
        for (int i = threadIdx.x; i < t.ntab; i += blockDim.x) {
            tab[i] = t.cum[i];
            tab[t.ntab + i] = t.n2[i];
            tab[2 * t.ntab + i] = t.base_lo[i];
            tab[3 * t.ntab + i] = t.base_hi[i];
        }
        __syncthreads();
        t.cum = tab, t.n2 = tab + t.ntab, t.base_lo = tab + 2 * t.ntab, t.base_hi = tab + 3 * t.ntab;
    }
    const int64_t row = (int64_t)blockIdx.x * PVQ_GEMV_WARPS + warp;
    if (row >= rows) return;
    const int W = t.field_bits, D = t.D;
    const int64_t G = n / D;
    const uint32_t *words = (const uint32_t *)data;
    const float scale = row_scales[row];
    float acc = 0.0f;
    for (int64_t g0 = 0; g0 < G; g0 += CHUNK) {
        const int cnt = G - g0 < CHUNK ? (int)(G - g0) : CHUNK;
        const pvqd_window wd = pvqd_chunk_window((uint64_t)row * row_bytes, g0, cnt, W);
        for (uint32_t i = lane; i < wd.count; i += 32) win[i] = __ldg(words + wd.first + i);
        __syncwarp();
        for (int j = lane; j < cnt; j += 32) {
            const int64_t g = g0 + j;
            const uint64_t f = pvqd_field(win, wd.bit0 + (uint32_t)j * W, W);
            if (FAST) {
                uint32_t lo, hi;
                const float s = pvqd_group8(&t, f, scale, &lo, &hi);
                const float4 a = __ldg((const float4 *)(x + g * 8)), b = __ldg((const float4 *)(x + g * 8) + 1);
                const float d = (float)pvqd_coord(lo, 0) * a.x + (float)pvqd_coord(lo, 1) * a.y +
                                (float)pvqd_coord(lo, 2) * a.z + (float)pvqd_coord(lo, 3) * a.w +
                                (float)pvqd_coord(hi, 0) * b.x + (float)pvqd_coord(hi, 1) * b.y +
                                (float)pvqd_coord(hi, 2) * b.z + (float)pvqd_coord(hi, 3) * b.w;
                acc += s * d;
            } else {
                int32_t yv[PVQD_MAX_D];
                const float s = pvqd_group(&t, f, scale, yv);
                float d = 0.0f;
                for (int i = 0; i < D; i++) d += (float)yv[i] * __ldg(x + g * D + i);
                acc += s * d;
            }
        }
        __syncwarp();
    }
    acc = warp_sum(acc);
    if (lane == 0) y[row] = acc;
}

extern "C" cudaError_t pvqk_gemv(const cuda_weight *w, const float *x, int T, float *y, int generic)
{
    const pvq_gemv_plan p = pvq_gemv_plan_make(w->tables.field_bits, w->n_out);
    const bool fast = w->tables.fast && !generic;
    const size_t smem = p.smem_bytes + (fast ? 4 * (size_t)w->tables.ntab * sizeof(uint32_t) : 0);
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * w->n_in;
        float *yt = y + (size_t)t * w->n_out;
        if (fast)
            pvq_gemv_kernel<true><<<p.grid, p.block, smem>>>(w->tables, w->data, w->row_scales, w->n_out, w->n_in,
                                                             w->row_bytes, xt, yt, p.window_words);
        else
            pvq_gemv_kernel<false><<<p.grid, p.block, smem>>>(w->tables, w->data, w->row_scales, w->n_out, w->n_in,
                                                              w->row_bytes, xt, yt, p.window_words);
    }
    return cudaGetLastError();
}

/* One thread per group of one requested row; weights as the format defines them (bit-identical). */
__global__ void pvq_dequantize_kernel(pvqd_tables t, const uint8_t *data, const float *row_scales, size_t row_bytes,
                                      int64_t n, const int32_t *row_ids, float *out)
{
    const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, G = n / t.D;
    if (g >= G) return;
    const int64_t row = row_ids[blockIdx.y];
    const uint64_t bit = (uint64_t)row * row_bytes * 8 + (uint64_t)g * t.field_bits;
    const uint64_t f = pvqd_field((const uint32_t *)data + (bit >> 5), (uint32_t)(bit & 31), t.field_bits);
    int32_t yv[PVQD_MAX_D];
    const float s = pvqd_group(&t, f, row_scales[row], yv);
    float *o = out + (size_t)blockIdx.y * n + g * t.D;
    for (int i = 0; i < t.D; i++) o[i] = (float)yv[i] * s;
}

extern "C" cudaError_t pvqk_dequantize_rows(const cuda_weight *w, const int32_t *row_ids, int n, float *out)
{
    const int64_t G = w->n_in / w->tables.D;
    const dim3 grid((unsigned)((G + 127) / 128), (unsigned)n);
    pvq_dequantize_kernel<<<grid, 128>>>(w->tables, w->data, w->row_scales, w->row_bytes, w->n_in, row_ids, out);
    return cudaGetLastError();
}
