/* GPU benchmarks: PVQ GEMV bandwidth against the device copy bandwidth measured in the same run and
 * against an fp16 GEMV of the same shape, the tensor-core prefill's throughput, and the decode speed
 * of a Llama-7B-shaped model with random PVQ weights.  Times are medians of repeats (CUDA events). */
#include "cuda_check.h"
#include "errmsg.h"
#include "kernels.h"
#include "kernels/pvq_codec.h"
#include "pvq_cuda.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define REPEATS 7

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

typedef enum { RUN_COPY, RUN_PVQ, RUN_F16, RUN_MMA } run_kind;

typedef struct {
    run_kind kind;
    const cuda_weight *w;
    const float *x;
    float *y;
    int T;
    void *dst;                /* RUN_COPY: destination; RUN_PVQ: the int8 activations' scratch; RUN_MMA: T floats */
    const void *src;
    size_t bytes;
} bench_job;

static cudaError_t run_once(const bench_job *j)
{
    switch (j->kind) {
    case RUN_COPY: return cudaMemcpy(j->dst, j->src, j->bytes, cudaMemcpyDeviceToDevice);
    case RUN_PVQ: return pvqk_gemv(j->w, j->x, 1, j->y, 0, j->dst);
    case RUN_F16: return densek_gemv(j->w, j->x, 1, j->y, NULL);
    case RUN_MMA: return pvqk_matmul_mma(j->w, j->x, j->T, j->y, j->dst);
    }
    return cudaErrorInvalidValue;
}

/* Median milliseconds of one call over REPEATS runs of `iters` calls each (after one warm-up run). */
static int time_ms(const bench_job *j, int iters, float *ms, char *err, size_t err_len)
{
    float t[REPEATS];
    cudaEvent_t a = NULL, b = NULL;
    int rc = -1;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int r = -1; r < REPEATS; r++) {
        CK(cudaEventRecord(a, 0));
        for (int i = 0; i < iters; i++) CK(run_once(j));
        CK(cudaEventRecord(b, 0));
        CK(cudaEventSynchronize(b));
        float e;
        CK(cudaEventElapsedTime(&e, a, b));
        if (r >= 0) t[r] = e / (float)iters;
    }
    qsort(t, REPEATS, sizeof t[0], cmp_float);
    *ms = t[REPEATS / 2];
    rc = 0;
out:
    if (a) cudaEventDestroy(a);
    if (b) cudaEventDestroy(b);
    return rc;
}

static uint32_t preset_type(double bpw)
{
    return bpw < 4.0 ? PVQ_TYPE_BASE | 8u << 20 | 3u << 16 | 14u : PVQ_TYPE_BASE | 8u << 20 | 4u << 16 | 29u;
}

int pvq_cuda_bench_gemv(int reps, char *err, size_t err_len)
{
    const size_t copy_bytes = (size_t)1 << 30;
    void *c0 = NULL, *c1 = NULL;
    float *x = NULL, *y = NULL;
    uint16_t *f16 = NULL;
    void *scratch = NULL, *tile_scale = NULL;
    pvq_cuda_model *g = NULL;
    int rc = -1;
    float copy_ms;
    CK(cudaMalloc(&c0, copy_bytes));
    CK(cudaMalloc(&c1, copy_bytes));
    CK(cudaMemset(c0, 1, copy_bytes));
    bench_job copy = {RUN_COPY, NULL, NULL, NULL, 0, c1, c0, copy_bytes};
    if (time_ms(&copy, 5, &copy_ms, err, err_len)) goto out;
    const double copy_gbs = 2.0 * (double)copy_bytes / (copy_ms * 1e-3) / 1e9;   /* read + write */
    printf("device copy (cudaMemcpy device to device, 1 GiB, read + write): %.1f GB/s\n", copy_gbs);
    cudaFree(c0), cudaFree(c1);
    c0 = c1 = NULL;
    printf("%-6s %-13s %10s %9s %8s %10s %9s\n", "bpw", "rows x cols", "PVQ us", "GB/s", "% copy", "fp16 us",
           "fp16/PVQ");
    const int dims[2][2] = {{4096, 14336}, {8192, 28672}};
    const double presets[2] = {3.25, 4.25};
    const int prefill_T = 512;
    CK(cudaMalloc((void **)&x, (size_t)prefill_T * 28672 * 4));
    CK(cudaMalloc((void **)&y, (size_t)prefill_T * 28672 * 4));
    CK(k_fill_uniform_f32(x, (size_t)prefill_T * 28672, -1.0f, 1.0f, 5));
    CK(cudaMalloc(&scratch, pvqk_q8_scratch_bytes(28672)));
    CK(cudaMalloc(&tile_scale, (size_t)prefill_T * sizeof(float)));
    for (int d = 0; d < 2; d++)
        for (int p = 0; p < 2; p++) {
            /* one layer of dim x ffn: gate is ffn x dim, down is dim x ffn */
            pvq_cuda_random_shape s = {1, dims[d][0], 32, 8, dims[d][1], 64, 0, 0, preset_type(presets[p])};
            if (pvq_cuda_model_random(&s, 4, 1, 11, &g, err, err_len)) goto out;
            for (int which = 4; which <= 6; which += 2) {
                const cuda_weight *w = pvq_cuda_model_weight(g, 0, which);
                bench_job pj = {RUN_PVQ, w, x, y, 1, scratch, NULL, 0};
                float pvq_ms, f16_ms;
                if (time_ms(&pj, reps, &pvq_ms, err, err_len)) goto out;
                const double bytes = (double)w->row_bytes * w->n_out + 4.0 * w->n_out * 2 + 4.0 * w->n_in;
                CK(cudaMalloc((void **)&f16, (size_t)w->n_out * w->n_in * 2 + 16));
                CK(k_fill_uniform_f16(f16, (size_t)w->n_out * w->n_in, -0.01f, 0.01f, 3));
                cuda_weight fw = {1 /* F16 */, 0, w->n_in, w->n_out, (size_t)w->n_in * 2, (const uint8_t *)f16, NULL,
                                  w->tables, {0, 0}};
                bench_job fj = {RUN_F16, &fw, x, y, 1, NULL, NULL, 0};
                if (time_ms(&fj, reps, &f16_ms, err, err_len)) goto out;
                cudaFree(f16);
                f16 = NULL;
                char shape[32];
                snprintf(shape, sizeof shape, "%lldx%lld", (long long)w->n_out, (long long)w->n_in);
                const double gbs = bytes / (pvq_ms * 1e-3) / 1e9;
                printf("%-6.2f %-13s %10.1f %9.1f %7.1f%% %10.1f %8.2fx\n", presets[p], shape, pvq_ms * 1e3, gbs,
                       100.0 * gbs / copy_gbs, f16_ms * 1e3, f16_ms / pvq_ms);
                if (which == 4) {
                    bench_job mj = {RUN_MMA, w, x, y, prefill_T, tile_scale, NULL, 0};
                    float mma_ms;
                    if (time_ms(&mj, 3, &mma_ms, err, err_len)) goto out;
                    printf("       prefill %d tokens on tensor cores: %.2f ms, %.1f TFLOP/s\n", prefill_T, mma_ms,
                           2.0 * prefill_T * (double)w->n_out * w->n_in / (mma_ms * 1e-3) / 1e12);
                }
            }
            pvq_cuda_model_free(g);
            g = NULL;
        }
    rc = 0;
out:
    cudaFree(c0), cudaFree(c1), cudaFree(x), cudaFree(y), cudaFree(f16), cudaFree(scratch), cudaFree(tile_scale);
    pvq_cuda_model_free(g);
    return rc;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int pvq_cuda_bench_decode(uint32_t pvq_type, int n_tokens, char *err, size_t err_len)
{
    /* Llama-2-7B: 32 layers, dim 4096, 32 heads, n_ff 11008 (Hadamard plan 344 x 32), vocab 32000 */
    pvq_cuda_random_shape s = {32, 4096, 32, 32, 11008, 32000, 344, 32, pvq_type};
    pvq_cuda_model *g = NULL;
    float *logits = malloc(32000 * sizeof(float));
    int rc = -1;
    if (!logits) return err_fail(err, err_len, "out of memory");
    if (pvq_cuda_model_random(&s, n_tokens + 1, 1, 1, &g, err, err_len)) goto done;
    int32_t tok = 1;
    if (pvq_cuda_forward(g, &tok, 1, logits, err, err_len)) goto done;   /* warm-up: first launch of every kernel */
    double t0 = now_s();
    for (int i = 0; i < n_tokens; i++) {
        tok = (int32_t)((i * 7919 + 13) % 32000);
        if (pvq_cuda_forward(g, &tok, 1, logits, err, err_len)) goto done;
    }
    double dt = now_s() - t0;
    printf("Llama-7B-shaped random PVQ model (type %#x, %.2f GB of weights, decode step %s): %d tokens decoded, "
           "%.1f tokens/s (%.2f ms/token, weights streamed at %.0f GB/s)\n",
           pvq_type, (double)pvq_cuda_weight_bytes(g) / 1e9,
           pvq_cuda_uses_graph(g) ? "as a CUDA graph" : "launched kernel by kernel", n_tokens, n_tokens / dt,
           1e3 * dt / n_tokens, (double)pvq_cuda_weight_bytes(g) * n_tokens / dt / 1e9);
    rc = 0;
done:
    free(logits);
    pvq_cuda_model_free(g);
    return rc;
}
