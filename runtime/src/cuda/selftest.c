/* The CUDA kernels against the host references on random data (run on a GPU machine, e.g. under
 * compute-sanitizer): PVQ dequantization bit-identical to pvq_dequantize_row_ref, the GEMV's fast path
 * (int8 activations) against pvq_dot_row_q8_ref, its generic path and the tensor-core prefill against
 * pvq_dot_row_ref (the prefill also on tokens of magnitude 1e5, beyond fp16), the Q8_0 GEMV's
 * activation blocks byte-identical to the CPU's f32_to_q8_0_row and its products against
 * dot_q8_0_ref, the Hadamard transform against its dense definition.  The other dense kernels, norms,
 * RoPE and attention are checked end to end by `pvq-cuda compare` (logits against the CPU path). */
#include "cuda_check.h"
#include "errmsg.h"
#include "kernels.h"
#include "kernels/pvq_codec.h"
#include "pvq_cuda.h"
#include "types.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int report(int ok, const char *what, double value)
{
    printf("%s %-72s %.3g\n", ok ? "ok  " : "FAIL", what, value);
    return !ok;
}

/* Host copies of a device PVQ weight and a codec for it (levels copied back from the device). */
typedef struct {
    pvq_codec c;
    uint8_t *data;
    float *scales;
} host_pvq;

static int fetch(const cuda_weight *w, host_pvq *h, char *err, size_t err_len)
{
    memset(h, 0, sizeof *h);
    float levels[256];
    char msg[256];
    int n_levels = 1 << w->tables.gain_bits;
    size_t bytes = w->row_bytes * (size_t)w->n_out;
    h->data = malloc(bytes), h->scales = malloc((size_t)w->n_out * 4);
    if (!h->data || !h->scales) return err_fail(err, err_len, "out of memory");
    if (cudaMemcpy(levels, w->tables.levels, (size_t)n_levels * 4, cudaMemcpyDeviceToHost) != cudaSuccess ||
        cudaMemcpy(h->data, w->data, bytes, cudaMemcpyDeviceToHost) != cudaSuccess ||
        cudaMemcpy(h->scales, w->row_scales, (size_t)w->n_out * 4, cudaMemcpyDeviceToHost) != cudaSuccess)
        return err_fail(err, err_len, "CUDA: copy back failed");
    if (pvq_codec_init(&h->c, w->type, levels, (size_t)n_levels, msg, sizeof msg)) return err_fail(err, err_len, "%s", msg);
    return 0;
}

static void host_free(host_pvq *h)
{
    if (h->c.count) pvq_codec_free(&h->c);
    free(h->data), free(h->scales);
}

/* One layout: dequantize, GEMV (both paths), tensor-core prefill of T tokens on one matrix. */
static int check_layout(uint32_t type, const char *label, int *failed, char *err, size_t err_len)
{
    const int T = 70;
    pvq_cuda_random_shape shape = {1, 1024, 8, 4, 2816, 320, 0, 0, type};
    pvq_cuda_model *g = NULL;
    host_pvq h;
    memset(&h, 0, sizeof h);
    float *x = NULL, *y = NULL, *ref = NULL, *ref_q8 = NULL, *row = NULL, *got_rows = NULL, *dx = NULL, *dy = NULL;
    float *drows = NULL, *xs = NULL, *tile_scale = NULL;
    int32_t *ids = NULL, *dids = NULL;
    int8_t *xq = NULL;
    void *scratch = NULL;
    int rc = -1;
    if (pvq_cuda_model_random(&shape, 8, 1, 7, &g, err, err_len)) return -1;
    const cuda_weight *w = pvq_cuda_model_weight(g, 0, 4);   /* gate: 2816 x 1024 */
    const int64_t n = w->n_in, rows = w->n_out;
    if (fetch(w, &h, err, err_len)) goto out;
    x = malloc((size_t)T * n * 4), y = malloc((size_t)T * rows * 4), ref = malloc((size_t)T * rows * 4);
    row = malloc((size_t)n * 4), ids = malloc((size_t)rows * 4), ref_q8 = malloc((size_t)rows * 4);
    got_rows = malloc((size_t)rows * n * 4);
    xq = malloc((size_t)(n + 127) / 128 * 128), xs = malloc((size_t)(n + 127) / 128 * 4);
    if (!x || !y || !ref || !row || !ids || !got_rows || !ref_q8 || !xq || !xs) {
        err_fail(err, err_len, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < (size_t)T * n; i++) x[i] = sinf(0.37f * (float)i) + 0.25f * cosf(1.3f * (float)i);
    for (int64_t r = 0; r < rows; r++) ids[r] = (int32_t)r;
    CK(cudaMalloc((void **)&dx, (size_t)T * n * 4));
    CK(cudaMalloc((void **)&dy, (size_t)T * rows * 4));
    CK(cudaMalloc((void **)&drows, (size_t)rows * n * 4));
    CK(cudaMalloc(&scratch, pvqk_q8_scratch_bytes(n)));
    CK(cudaMalloc((void **)&dids, (size_t)rows * 4));
    CK(cudaMalloc((void **)&tile_scale, (size_t)T * 4));
    CK(cudaMemcpy(dids, ids, (size_t)rows * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dx, x, (size_t)T * n * 4, cudaMemcpyHostToDevice));
    CK(pvqk_dequantize_rows(w, dids, (int)rows, drows));
    CK(cudaMemcpy(got_rows, drows, (size_t)rows * n * 4, cudaMemcpyDeviceToHost));
    int exact = 1;
    double mag_max = 0;
    if (h.c.D == 8) pvq_quantize_x_q8(x, n, xq, xs);
    for (int64_t r = 0; r < rows; r++) {
        pvq_dequantize_row_ref(&h.c, h.data + (size_t)r * w->row_bytes, h.scales[r], n, row);
        if (h.c.D == 8) ref_q8[r] = pvq_dot_row_q8_ref(&h.c, h.data + (size_t)r * w->row_bytes, h.scales[r], n, xq, xs);
        exact &= !memcmp(row, got_rows + (size_t)r * n, (size_t)n * 4);
        for (int t = 0; t < T; t++) {
            ref[(size_t)t * rows + r] = pvq_dot_row_ref(&h.c, h.data + (size_t)r * w->row_bytes, h.scales[r], n,
                                                         x + (size_t)t * n);
            double mag = 0;
            for (int64_t i = 0; i < n; i++) mag += fabs((double)row[i] * x[(size_t)t * n + i]);
            if (mag > mag_max) mag_max = mag;
        }
    }
    char what[160];
    snprintf(what, sizeof what, "%s: dequantized rows bit-identical to pvq_dequantize_row_ref", label);
    *failed += report(exact, what, 0);
    for (int generic = 0; generic <= 1; generic++) {
        if (generic && !w->tables.fast) break;
        const int fast = w->tables.fast && !generic;
        CK(pvqk_gemv(w, dx, 1, dy, generic, scratch));
        CK(cudaMemcpy(y, dy, (size_t)rows * 4, cudaMemcpyDeviceToHost));
        double worst = 0;
        for (int64_t r = 0; r < rows; r++) worst = fmax(worst, fabs((double)y[r] - (fast ? ref_q8 : ref)[r]) / mag_max);
        snprintf(what, sizeof what, "%s: GEMV (%s) vs %s, max err / max sum|w x| < 1e-5", label,
                 fast ? "fast path, int8 x" : "generic path", fast ? "pvq_dot_row_q8_ref" : "pvq_dot_row_ref");
        *failed += report(worst < 1e-5, what, worst);
    }
    /* then with tokens scaled by 1e5 (fp16 overflows at 65504; down_proj inputs get there), 1e-4 and 1:
     * the reference is linear in x, and every output must be finite */
    for (int big = 0; big <= 1; big++) {
        if (big) {
            for (int t = 0; t < T; t++)
                for (int64_t i = 0; i < n; i++) x[(size_t)t * n + i] *= t % 3 == 0 ? 1e5f : t % 3 == 1 ? 1e-4f : 1.0f;
            CK(cudaMemcpy(dx, x, (size_t)T * n * 4, cudaMemcpyHostToDevice));
        }
        const cudaError_t e = pvqk_matmul_mma(w, dx, T, dy, tile_scale);
        if (e == cudaErrorInvalidValue) {
            snprintf(what, sizeof what, "%s: tensor-core prefill applies to a 1024-column matrix", label);
            *failed += report(0, what, 0);
            break;
        }
        CK(e);
        CK(cudaMemcpy(y, dy, (size_t)T * rows * 4, cudaMemcpyDeviceToHost));
        double worst = 0;
        for (size_t i = 0; i < (size_t)T * rows; i++) {
            const int t = (int)(i / rows);
            const double c = !big ? 1.0 : t % 3 == 0 ? 1e5 : t % 3 == 1 ? 1e-4 : 1.0;
            worst = isfinite(y[i]) ? fmax(worst, fabs((double)y[i] - c * ref[i]) / (c * mag_max)) : INFINITY;
        }
        snprintf(what, sizeof what, "%s: tensor-core prefill (%d tokens, fp16 operands%s) vs reference < 2e-3", label,
                 T, big ? ", |x| up to 1e5" : "");
        *failed += report(worst < 2e-3, what, worst);
    }
    CK(cudaDeviceSynchronize());
    rc = 0;
out:
    cudaFree(dx), cudaFree(dy), cudaFree(drows), cudaFree(dids), cudaFree(scratch), cudaFree(tile_scale);
    free(x), free(y), free(ref), free(ref_q8), free(row), free(ids), free(got_rows), free(xq), free(xs);
    host_free(&h);
    pvq_cuda_model_free(g);
    return rc;
}

/* The Q8_0 GEMV against the CPU's path: x of 3 tokens (a zero block, blocks of magnitude 1e-3 and 1e4)
 * quantized on the device byte for byte as f32_to_q8_0_row does, and each output against dot_q8_0_ref
 * of those blocks (only the summation order may differ), on a random 300 x 1024 Q8_0 matrix. */
static int check_q8_0(int *failed, char *err, size_t err_len)
{
    enum { ROWS = 300, N = 1024, T = 3, NB = N / QK8_0 };
    static block_q8_0 w[ROWS * NB], xq[T * NB], got_xq[T * NB];
    static float x[T * N], y[T * ROWS];
    uint32_t r = 12345;
    for (size_t i = 0; i < sizeof w; i++) ((uint8_t *)w)[i] = (uint8_t)((r = r * 1664525u + 1013904223u) >> 24);
    for (int b = 0; b < ROWS * NB; b++) w[b].d = f32_to_fp16(1e-3f * (float)(1 + b % 7));   /* finite scales */
    for (int i = 0; i < T * N; i++) {
        const int blk = i / QK8_0;
        x[i] = blk == 1 ? 0.0f : (blk % 5 == 2 ? 1e4f : blk % 5 == 3 ? 1e-3f : 1.0f) * sinf(0.71f * (float)i);
    }
    for (int t = 0; t < T; t++) f32_to_q8_0_row(x + t * N, xq + t * NB, N);
    const cuda_weight dw = {.type = T_Q8_0, .n_in = N, .n_out = ROWS, .row_bytes = NB * sizeof(block_q8_0)};
    uint8_t *dwd = NULL;
    float *dx = NULL, *dy = NULL;
    void *scratch = NULL;
    int rc = -1;
    CK(cudaMalloc((void **)&dwd, sizeof w + 16));
    CK(cudaMalloc((void **)&dx, sizeof x));
    CK(cudaMalloc((void **)&dy, sizeof y));
    CK(cudaMalloc(&scratch, densek_q8_0_scratch_bytes(N, T)));
    CK(cudaMemcpy(dwd, w, sizeof w, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dx, x, sizeof x, cudaMemcpyHostToDevice));
    cuda_weight wt = dw;
    wt.data = dwd;
    CK(densek_gemv(&wt, dx, T, dy, scratch));
    CK(cudaMemcpy(y, dy, sizeof y, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(got_xq, scratch, sizeof got_xq, cudaMemcpyDeviceToHost));
    *failed += report(!memcmp(xq, got_xq, sizeof xq),
                      "Q8_0 GEMV: activation blocks byte-identical to f32_to_q8_0_row (3 tokens)", 0);
    double worst = 0;
    for (int t = 0; t < T; t++)
        for (int row = 0; row < ROWS; row++) {
            float ref;
            double mag = 0;
            dot_q8_0_ref(N, w + row * NB, xq + t * NB, &ref);
            for (int b = 0; b < NB; b++) {
                int32_t a = 0;
                for (int j = 0; j < QK8_0; j++) a += abs(w[row * NB + b].qs[j] * xq[t * NB + b].qs[j]);
                mag += fp16_to_f32(w[row * NB + b].d) * fp16_to_f32(xq[t * NB + b].d) * a;
            }
            worst = fmax(worst, fabs((double)y[t * ROWS + row] - ref) / (mag > 0 ? mag : 1));
        }
    *failed += report(worst < 1e-5, "Q8_0 GEMV vs dot_q8_0_ref of the CPU's blocks, err / sum|w x| < 1e-5", worst);
    rc = 0;
out:
    cudaFree(dwd), cudaFree(dx), cudaFree(dy), cudaFree(scratch);
    return rc;
}

/* out = scale (B (x) H_p) x against the dense sum, B the 4 x 4 Sylvester matrix, p = 256, 3 tokens. */
static int check_hadamard(int *failed, char *err, size_t err_len)
{
    enum { H = 4, P = 256, N = H * P, T = 3 };
    int8_t base[H * H];
    for (int a = 0; a < H; a++)
        for (int b = 0; b < H; b++) base[a * H + b] = (int8_t)(__builtin_popcount(a & b) & 1 ? -1 : 1);
    /* a non-symmetric B: swapping two columns keeps B B^T = 4 I and catches a transposed use */
    for (int a = 0; a < H; a++) {
        int8_t t = base[a * H + 1];
        base[a * H + 1] = base[a * H + 2], base[a * H + 2] = t;
    }
    static float x[T * N], y[T * N];
    const float scale = 1.0f / sqrtf((float)N);
    for (int i = 0; i < T * N; i++) x[i] = cosf(0.11f * (float)i * (float)(i % 7 + 1));
    float *dx = NULL, *dy = NULL;
    int8_t *db = NULL;
    int rc = -1;
    CK(cudaMalloc((void **)&dx, sizeof x));
    CK(cudaMalloc((void **)&dy, sizeof y));
    CK(cudaMalloc((void **)&db, sizeof base));
    CK(cudaMemcpy(dx, x, sizeof x, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(db, base, sizeof base, cudaMemcpyHostToDevice));
    CK(k_hadamard(dx, dy, T, H, P, scale, db));
    CK(cudaMemcpy(y, dy, sizeof y, cudaMemcpyDeviceToHost));
    double worst = 0;
    for (int t = 0; t < T; t++)
        for (int a = 0; a < H; a++)
            for (int j = 0; j < P; j++) {
                double s = 0;
                for (int b = 0; b < H; b++)
                    for (int k = 0; k < P; k++)
                        s += base[a * H + b] * (__builtin_popcount(j & k) & 1 ? -1.0 : 1.0) * x[t * N + b * P + k];
                worst = fmax(worst, fabs(s * scale - y[t * N + a * P + j]));
            }
    *failed += report(worst < 1e-4, "hadamard 4 x 256 (non-symmetric B), 3 tokens vs dense definition, abs err", worst);
    rc = 0;
out:
    cudaFree(dx), cudaFree(dy), cudaFree(db);
    return rc;
}

int pvq_cuda_selftest(char *err, size_t err_len)
{
    int failed = 0;
    const struct { uint32_t type; const char *label; } layouts[] = {
        {PVQ_TYPE_BASE | 8u << 20 | 3u << 16 | 14u, "PVQ D=8 K=14 b=3 (3.25 bpw)"},
        {PVQ_TYPE_BASE | 8u << 20 | 4u << 16 | 29u, "PVQ D=8 K=29 b=4 (4.25 bpw)"},
        {PVQ_TYPE_BASE | 16u << 20 | 5u << 16 | 26u, "PVQ D=16 K=26 b=5 (generic)"},
    };
    for (size_t i = 0; i < sizeof layouts / sizeof layouts[0]; i++)
        if (check_layout(layouts[i].type, layouts[i].label, &failed, err, err_len)) return -1;
    if (check_q8_0(&failed, err, err_len) || check_hadamard(&failed, err, err_len)) return -1;
    return failed;
}
