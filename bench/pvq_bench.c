/* Decode throughput of the PVQ kernels: one thread, a matrix of random valid rows larger than the
 * caches, y = W x row by row (dot) or each row decoded to floats (dequantize).
 * usage: pvq_bench D K gain_bits n rows kernel(ref|scalar|avx2|avx512[-gather|-closed]) op(dot|dot_q8|dequantize)
 *                  repeats
 * dot_q8 quantizes x once (pvq_quantize_x_q8, timed) and runs the integer matvec (ref, avx2 or avx512).
 * avx2 and avx512 decode the halves as this CPU prefers (pvq_fast8.gather_halves); a suffix forces one way. */
#define _POSIX_C_SOURCE 199309L
#include "pvq_codec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t rng = 0x9E3779B97F4A7C15u;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static void put_field(uint8_t *row, int64_t g, int W, uint64_t v)
{
    uint64_t bit = (uint64_t)g * W;
    for (int i = 0; i < W; i++, bit++)
        if (v >> i & 1) row[bit >> 3] |= (uint8_t)(1u << (bit & 7));
}

int main(int argc, char **argv)
{
    if (argc != 9) {
        fprintf(stderr, "usage: %s D K gain_bits n rows ref|scalar|avx2|avx512[-gather|-closed] dot|dot_q8|dequantize "
                "repeats\n", argv[0]);
        return 2;
    }
    int D = atoi(argv[1]), K = atoi(argv[2]), b = atoi(argv[3]), reps = atoi(argv[8]);
    int64_t n = atoll(argv[4]), rows = atoll(argv[5]);
    char kind[16];
    const char *op = argv[7], *suffix = strchr(argv[6], '-');
    if (suffix && strcmp(suffix, "-gather") && strcmp(suffix, "-closed")) {
        fprintf(stderr, "unknown halves decoder '%s' (choose -gather or -closed)\n", suffix);
        return 2;
    }
    snprintf(kind, sizeof kind, "%.*s", suffix ? (int)(suffix - argv[6]) : 15, argv[6]);
    float levels[256];
    for (int i = 0; i < (1 << b); i++) levels[i] = 0.05f + 0.01f * i;
    pvq_codec c;
    char err[256];
    uint32_t id = PVQ_TYPE_BASE | (uint32_t)D << 20 | (uint32_t)b << 16 | (uint32_t)K;
    if (pvq_codec_init(&c, id, levels, (size_t)1 << b, err, sizeof err)) { fprintf(stderr, "%s\n", err); return 1; }
    size_t rb = pvq_row_bytes(&c, n);
    if (!rb) { fprintf(stderr, "bad row length\n"); pvq_codec_free(&c); return 1; }
    if (suffix) pvq_codec_set_gather_halves(&c, !strcmp(suffix, "-gather"));
    pvq_dequantize_fn deq = pvq_dequantize_row_ref;
    pvq_dot_fn dot = pvq_dot_row_ref;
    void (*matvec_q8)(const pvq_codec *, const uint8_t *, const uint16_t *, int64_t, int64_t, const int8_t *,
                      const float *, float *) = pvq_matvec_q8_ref;
    if (!strcmp(kind, "scalar")) {
        deq = pvq_dequantize_row_scalar; dot = pvq_dot_row_scalar;
    } else if (!strcmp(kind, "avx2")) {
        if (!c.fast || !isa_cpu_supports(ISA_AVX2)) { fprintf(stderr, "no avx2 path\n"); return 1; }
        deq = pvq_dequantize_row_avx2; dot = pvq_dot_row_avx2; matvec_q8 = pvq_matvec_q8_avx2;
    } else if (!strcmp(kind, "avx512")) {
        if (!c.fast || !isa_cpu_supports(ISA_AVX512)) { fprintf(stderr, "no avx512 path\n"); return 1; }
        deq = pvq_dequantize_row_avx512; dot = pvq_dot_row_avx512; matvec_q8 = pvq_matvec_q8_avx512;
    }
    if (!strcmp(op, "dot_q8") && (D != 8 || !strcmp(kind, "scalar"))) {
        fprintf(stderr, "dot_q8: D == 8 with ref, avx2 or avx512 only\n");
        return 1;
    }
    int8_t *xq = malloc((n + 127) / 128 * 128);
    float *xs = malloc((n + 127) / 128 * sizeof *xs);
    uint16_t *scales = malloc(rows * sizeof *scales);
    for (int64_t r = 0; r < rows; r++) scales[r] = 0x3C00;        /* 1.0 in fp16 */
    uint8_t *w = calloc(rows, rb);
    float *x = malloc(n * sizeof *x), *y = malloc(rows * sizeof *y), *buf = malloc(n * sizeof *buf);
    if (!w || !x || !y || !buf) { fprintf(stderr, "out of memory\n"); return 1; }
    for (int64_t r = 0; r < rows; r++)
        for (int64_t g = 0; g < n / D; g++) {
            uint64_t index;
            do index = next() & ((UINT64_C(1) << c.index_bits) - 1); while (!pvq_index_is_point(&c, index));
            put_field(w + r * rb, g, c.field_bits, index << b | (next() & ((1u << b) - 1)));
        }
    for (int64_t i = 0; i < n; i++) x[i] = (float)(next() % 1000) / 1000.0f - 0.5f;
    double best = 1e30, sink = 0;
    for (int rep = 0; rep < reps; rep++) {
        double t0 = now();
        if (!strcmp(op, "dot_q8")) {
            pvq_quantize_x_q8(x, n, xq, xs);
            matvec_q8(&c, w, scales, rows, n, xq, xs, y);
            sink += y[rows - 1];
        } else if (!strcmp(op, "dot")) {
            for (int64_t r = 0; r < rows; r++) y[r] = dot(&c, w + r * rb, 1.0f, n, x);
            sink += y[rows - 1];
        } else {
            for (int64_t r = 0; r < rows; r++) { deq(&c, w + r * rb, 1.0f, n, buf); sink += buf[n - 1]; }
        }
        double t = now() - t0;
        if (t < best) best = t;
    }
    printf("D=%d K=%d b=%d n=%lld rows=%lld bytes=%.1fMB %s %s: %.3f Gweights/s (%.2f GB/s) [%g]\n", D, K, b,
           (long long)n, (long long)rows, rows * rb / 1e6, kind, op, n * rows / best / 1e9,
           rows * rb / best / 1e9, sink);
    free(w); free(x); free(xq); free(xs); free(scales); free(y); free(buf);
    pvq_codec_free(&c);
    return 0;
}
