/* Memory-bound PVQ matrix-vector product: y = W x for one random PVQ matrix (rows x n, random valid fields),
 * through the runtime's decode path (pvq_quantize_x + pvq_matvec_rows on the runtime's thread pool), against
 * the machine's read bandwidth measured in the same run (threads summing a buffer larger than the caches).
 * Prints one JSON line: weight bytes, median seconds, effective GB/s of weight bytes, read GB/s.
 * With "repacked", decode reads the repacked rows (pvq_codec.h) instead; the GB/s still count the PVQ bytes.
 * usage: pvq_gemv type_id rows n threads repeats [repacked] */
#define _POSIX_C_SOURCE 199309L
#include "pvq_matmul.h"
#include "threadpool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct {
    const pvq_weight *w;
    const uint8_t *data;
    size_t row_bytes;
    int64_t n, rows;
    const float *x;
    const void *xq;
    float *y;
} gemv_task;

static void gemv_rows(void *arg, int ith, int nth) {
    gemv_task *t = arg;
    int64_t per = (t->rows + nth - 1) / nth, r0 = per * ith, r1 = r0 + per < t->rows ? r0 + per : t->rows;
    pvq_matvec_rows(t->w, t->data, t->row_bytes, t->n, r0, r1, t->x, t->xq, t->y);
}

typedef struct {
    const float *buf;
    size_t n;
    float sums[64];
} read_task;

/* Sums this thread's share of the buffer in 8 independent lanes (the compiler vectorises the loop). */
static void read_share(void *arg, int ith, int nth) {
    read_task *t = arg;
    size_t per = t->n / (size_t)nth / 64 * 64, i0 = per * (size_t)ith;
    float acc[16] = {0};
    for (size_t i = i0; i < i0 + per; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += t->buf[i + j];
    float s = 0;
    for (int j = 0; j < 16; j++) s += acc[j];
    t->sums[ith] = s;
}

int main(int argc, char **argv) {
    if (argc != 6 && !(argc == 7 && !strcmp(argv[6], "repacked"))) {
        fprintf(stderr, "usage: %s type_id rows n threads repeats [repacked]\n", argv[0]);
        return 2;
    }
    uint32_t id = (uint32_t)strtoul(argv[1], NULL, 0);
    int64_t rows = atoll(argv[2]), n = atoll(argv[3]);
    int threads = atoi(argv[4]), reps = atoi(argv[5]);
    char err[256];
    int D, K, b;
    if (pvq_type_params(id, &D, &K, &b, err, sizeof err) || rows < 1 || threads < 1 || threads > 64 || reps < 1) {
        fprintf(stderr, "bad arguments: %s\n", err);
        return 2;
    }
    float levels[256];
    for (int i = 0; i < (1 << b); i++) levels[i] = 0.05f + 0.01f * (float)i;
    pvq_layout layout;
    if (pvq_codec_init(&layout.codec, id, levels, (size_t)1 << b, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    for (int isa = 0; isa < ISA_COUNT; isa++) pvq_select_kernels(&layout.codec, (isa_id)isa, &layout.k[isa]);
    const pvq_kernels *k = &layout.k[isa_active()]; /* PVQ_ISA chooses, as in the runtime */
    size_t rb = pvq_row_bytes(&layout.codec, n);
    if (!rb) {
        fprintf(stderr, "n = %lld is not a whole number of blocks\n", (long long)n);
        return 1;
    }
    uint8_t *data = calloc((size_t)rows, rb);
    uint16_t *scales = malloc((size_t)rows * 2);
    float *x = malloc((size_t)n * 4), *y = malloc((size_t)rows * 4);
    void *xq = malloc(pvq_xq_bytes(n));
    size_t read_n = (size_t)1 << 28; /* 1 GiB of floats: far beyond the caches */
    float *big = malloc(read_n * 4);
    if (!data || !scales || !x || !y || !xq || !big) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    uint64_t rng = 0x9E3779B97F4A7C15u;
    const int W = layout.codec.field_bits;
    for (int64_t r = 0; r < rows; r++) {
        scales[r] = 0x3C00; /* 1.0 */
        uint8_t *row = data + (size_t)r * rb;
        for (int64_t g = 0; g < n / D; g++) {
            uint64_t index;
            do {                /* uniform over the codes that are points: uniform points */
                rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
                index = rng & ((UINT64_C(1) << layout.codec.index_bits) - 1);
            } while (!pvq_index_is_point(&layout.codec, index));
            uint64_t v = index << b | (rng >> 40) % (1u << b), bit = (uint64_t)g * W;
            for (int i = 0; i < W; i++, bit++)
                if (v >> i & 1) row[bit >> 3] |= (uint8_t)(1u << (bit & 7));
        }
    }
    for (int64_t i = 0; i < n; i++) x[i] = (float)((i * 7919) % 2001 - 1000) / 1000.0f;
    for (size_t i = 0; i < read_n; i++) big[i] = (float)(i & 1023);
    pvq_weight w = {&layout, scales, NULL, 0};
    if (argc == 7) {
        if (!k->repack) {
            fprintf(stderr, "type %s has no repacked layout (D = 8 with a fast path only)\n", argv[1]);
            return 1;
        }
        w.repacked_row_bytes = pvq_repacked_row_bytes(n);
        if (!(w.repacked = malloc(w.repacked_row_bytes * (size_t)rows))) return 1;
        for (int64_t r = 0; r < rows; r++)
            k->repack(&layout.codec, data + (size_t)r * rb, 1.0f, n, w.repacked + (size_t)r * w.repacked_row_bytes);
    }
    threadpool *pool = pool_new(threads);
    if (!pool) return 1;

    double *t_gemv = malloc((size_t)reps * sizeof(double)), *t_read = malloc((size_t)reps * sizeof(double));
    gemv_task gt = {&w, data, rb, n, rows, x, xq, y};
    read_task rt = {big, read_n, {0}};
    pool_run(pool, gemv_rows, &gt); /* warm-up: page faults, tables */
    pool_run(pool, read_share, &rt);
    for (int i = 0; i < reps; i++) {
        double t0 = now();
        pvq_quantize_x(x, n, xq);
        pool_run(pool, gemv_rows, &gt);
        t_gemv[i] = now() - t0;
        t0 = now();
        pool_run(pool, read_share, &rt);
        t_read[i] = now() - t0;
    }
    qsort(t_gemv, (size_t)reps, sizeof(double), cmp_double);
    qsort(t_read, (size_t)reps, sizeof(double), cmp_double);
    double bytes = (double)rb * (double)rows + 2.0 * (double)rows, tg = t_gemv[reps / 2], tr = t_read[reps / 2];
    printf("{\"rows\": %lld, \"n\": %lld, \"kernel\": \"%s%s\", \"threads\": %d, \"weight_bytes\": %.0f, "
           "\"bits_per_weight\": %.4f, \"gemv_s\": %.6f, \"gemv_gbps\": %.3f, \"weights_per_s\": %.4g, "
           "\"read_gbps\": %.3f, \"checksum\": %g}\n",
           (long long)rows, (long long)n, k->name, w.repacked ? " repacked" : "", threads, bytes, 8 * bytes / ((double)rows * (double)n), tg,
           bytes / tg / 1e9, (double)rows * (double)n / tg, (double)read_n * 4 / tr / 1e9, (double)y[0] + rt.sums[0]);
    pool_free(pool);
    free(w.repacked);
    pvq_codec_free(&layout.codec);
    return 0;
}
