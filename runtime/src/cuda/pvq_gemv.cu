/* PVQ decode-GEMV for batch 1: each warp owns a row at a time; it stages the words of a chunk of 256
 * groups in its slice of shared memory with coalesced loads, each lane decodes 8 groups from there
 * (decode.h) and dots them with x, and a warp sum times the row scale gives the row's output.  The
 * D == 8 fast path takes x as int8 per 128 values (the CPU kernels' rule, quantized here first) and
 * dots with two dp4a; the generic path takes float32 x.  On the fast path a block first copies the
 * small tables (per-k1 tables, gain levels, the k1 bucket
 * table: 2 KB for K = 14, 29 KB for K = 29) to shared memory, once for all the rows its warps visit;
 * lut4 stays in global memory, read through L1/L2 (120 KB for K = 14, 2 MB for K = 29). */
#include "common.cuh"
#include "kernels.h"
#include "plan.h"

#define CHUNK (32 * PVQ_GEMV_GROUPS_PER_LANE)

/* Copies the fast path's small tables to shared memory (layout of plan.h) and points t at them. */
__device__ void stage_tables(pvqd_tables *t, unsigned char *smem)
{
    const int n = t->ntab;
    double *inv_d = (double *)smem;
    uint32_t *w = (uint32_t *)(inv_d + n);
    uint32_t *cum = w, *n2 = w + n, *lo = w + 2 * n, *hi = w + 3 * n;
    float *inv = (float *)(w + 4 * n), *levels = inv + n;
    uint32_t *bucket = (uint32_t *)(levels + (1 << t->gain_bits));
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        inv_d[i] = t->inv_n2d[i], cum[i] = t->cum[i], n2[i] = t->n2[i];
        lo[i] = t->base_lo[i], hi[i] = t->base_hi[i], inv[i] = t->inv_n2[i];
    }
    for (int i = threadIdx.x; i < (1 << t->gain_bits); i += blockDim.x) levels[i] = t->levels[i];
    const uint32_t *src = (const uint32_t *)t->bucket_k1;   /* the blob pads it to 8 bytes */
    for (uint32_t i = threadIdx.x; i < (t->bucket_len + 3) / 4; i += blockDim.x) bucket[i] = src[i];
    __syncthreads();
    t->inv_n2d = inv_d, t->cum = cum, t->n2 = n2, t->base_lo = lo, t->base_hi = hi, t->inv_n2 = inv;
    t->levels = levels, t->bucket_k1 = (const uint8_t *)bucket;
}

/* x as int8 per step of 128 values and one float scale per step (plain order; decode.h's rule), one
 * warp per step, 4 values per lane; the last step is zero-padded. */
__global__ void quantize_q8_kernel(const float *__restrict__ x, int64_t n, int8_t *__restrict__ xq,
                                   float *__restrict__ xs, int64_t steps)
{
    const int64_t step = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (step >= steps) return;
    const int64_t i0 = step * PVQD_Q8_STEP + 4 * lane;
    float v[4], amax = 0.0f;
    for (int j = 0; j < 4; j++) {
        v[j] = i0 + j < n ? x[i0 + j] : 0.0f;
        amax = fmaxf(amax, fabsf(v[j]));
    }
    amax = warp_max(amax);
    const float inv = pvqd_q8_inv(amax);
    char4 q;
    q.x = pvqd_q8(v[0], inv), q.y = pvqd_q8(v[1], inv), q.z = pvqd_q8(v[2], inv), q.w = pvqd_q8(v[3], inv);
    *(char4 *)(xq + i0) = q;
    if (lane == 0) xs[step] = amax / 127.0f;
}

extern "C" size_t pvqk_q8_scratch_bytes(int64_t n)
{
    const int64_t steps = (n + PVQD_Q8_STEP - 1) / PVQD_Q8_STEP;
    return (size_t)steps * PVQD_Q8_STEP + (size_t)steps * sizeof(float);
}

template <bool FAST>
__global__ void __launch_bounds__(32 * PVQ_GEMV_WARPS)
pvq_gemv_kernel(pvqd_tables t, const uint8_t *__restrict__ data, const float *__restrict__ row_scales, int64_t rows,
                int64_t n, size_t row_bytes, const float *__restrict__ x, const int8_t *__restrict__ xq,
                const float *__restrict__ xs, float *__restrict__ y, unsigned window_words, size_t tables_offset)
{
    extern __shared__ __align__(8) unsigned char smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    uint32_t *win = (uint32_t *)smem + warp * window_words;
    if (FAST) stage_tables(&t, smem + tables_offset);
    const int W = t.field_bits, D = t.D;
    const int64_t G = n / D;
    const uint32_t *words = (const uint32_t *)data;
    for (int64_t row = (int64_t)blockIdx.x * PVQ_GEMV_WARPS + warp; row < rows; row += (int64_t)gridDim.x * PVQ_GEMV_WARPS) {
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
                    const float s = pvqd_factor8(&t, f, &lo, &hi);   /* the row scale comes last */
                    const uint2 xv = __ldg((const uint2 *)(xq + g * 8));
                    acc += s * __ldg(xs + (g >> 4)) * (float)pvqd_dot8_q8(lo, hi, xv.x, xv.y);
                } else {
                    int32_t yv[PVQD_MAX_D];
                    const float s = pvqd_group(&t, f, 1.0f, yv);
                    float d = 0.0f;
                    for (int i = 0; i < D; i++) d += (float)yv[i] * __ldg(x + g * D + i);
                    acc += s * d;
                }
            }
            __syncwarp();
        }
        acc = warp_sum(acc);
        if (lane == 0) y[row] = row_scales[row] * acc;
    }
}

/* Grid cap and shared-memory limit of one path of a weight's GEMV. */
template <bool FAST> static cudaError_t prepare_path(const cuda_weight *w, unsigned *blocks)
{
    const pvq_gemv_plan p = pvq_gemv_plan_make(&w->tables, FAST, w->n_out, 0);
    int dev = 0, sms = 0, per_sm = 0;
    cudaError_t e;
    if ((e = pvqk_raise_smem_limit((const void *)pvq_gemv_kernel<FAST>, p.smem_bytes)) || (e = cudaGetDevice(&dev)) || (e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev)) ||
        (e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, pvq_gemv_kernel<FAST>, p.block, p.smem_bytes)))
        return e;
    *blocks = (unsigned)(sms * per_sm);
    return cudaSuccess;
}

extern "C" cudaError_t pvqk_prepare(cuda_weight *w)
{
    cudaError_t e = w->tables.fast ? prepare_path<true>(w, &w->gemv_blocks[0]) : cudaSuccess;
    return e ? e : prepare_path<false>(w, &w->gemv_blocks[1]);
}

extern "C" cudaError_t pvqk_gemv(const cuda_weight *w, const float *x, int T, float *y, int generic, void *scratch)
{
    const bool fast = w->tables.fast && !generic;
    const pvq_gemv_plan p = pvq_gemv_plan_make(&w->tables, fast, w->n_out, w->gemv_blocks[fast ? 0 : 1]);
    const int64_t steps = (w->n_in + PVQD_Q8_STEP - 1) / PVQD_Q8_STEP;
    int8_t *xq = (int8_t *)scratch;
    float *xs = (float *)(xq + steps * PVQD_Q8_STEP);
    cudaError_t e = cudaSuccess;
    for (int t = 0; t < T && !e; t++) {
        const float *xt = x + (size_t)t * w->n_in;
        float *yt = y + (size_t)t * w->n_out;
        if (fast) {
            quantize_q8_kernel<<<(unsigned)((steps + 7) / 8), 256>>>(xt, w->n_in, xq, xs, steps);
            if ((e = pvqk_launched("quantize_q8_kernel"))) break;
            pvq_gemv_kernel<true><<<p.grid, p.block, p.smem_bytes>>>(w->tables, w->data, w->row_scales, w->n_out, w->n_in,
                                                                     w->row_bytes, NULL, xq, xs, yt, p.window_words,
                                                                     p.tables_offset);
            e = pvqk_launched("pvq_gemv_kernel<fast>");
        } else {
            pvq_gemv_kernel<false><<<p.grid, p.block, p.smem_bytes>>>(w->tables, w->data, w->row_scales, w->n_out,
                                                                      w->n_in, w->row_bytes, xt, NULL, NULL, yt,
                                                                      p.window_words, p.tables_offset);
            e = pvqk_launched("pvq_gemv_kernel<generic>");
        }
    }
    return e;
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
    return pvqk_launched("pvq_dequantize_kernel");
}
