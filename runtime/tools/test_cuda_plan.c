/* Host checks of the CUDA backend's planning and decode code (src/cuda/plan.c, src/cuda/decode.h),
 * run without a GPU: the decode path the kernels take (word windows of a chunk, field extraction,
 * the fast D == 8 tables and the generic enumeration, from the device table blob) must give the
 * codec reference's weights bit for bit, on rows at every byte alignment.  Exit status 0 when every
 * check passes; one line per check on stdout. */
#include "cuda/plan.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

static void check(int ok, const char *what)
{
    printf("%s %s\n", ok ? "ok  " : "FAIL", what);
    failures += !ok;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15u;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17;
    return rng_state;
}

static void put_field(uint8_t *row, int64_t g, int W, uint64_t v)
{
    for (int i = 0; i < W; i++) {
        uint64_t bit = (uint64_t)g * W + i;
        if ((v >> i) & 1) row[bit >> 3] |= (uint8_t)(1u << (bit & 7));
    }
}

/* x quantized as the GEMV's quantize kernel does it: per step of 128, plain order, zero-padded. */
static void kernel_quantize(const float *x, int64_t n, int8_t *xq, float *xs)
{
    for (int64_t s = 0; s * PVQD_Q8_STEP < n; s++) {
        float amax = 0.0f;
        for (int64_t i = s * PVQD_Q8_STEP; i < (s + 1) * PVQD_Q8_STEP; i++) amax = fmaxf(amax, i < n ? fabsf(x[i]) : 0.0f);
        const float inv = pvqd_q8_inv(amax);
        for (int64_t i = s * PVQD_Q8_STEP; i < (s + 1) * PVQD_Q8_STEP; i++) xq[i] = i < n ? pvqd_q8(x[i], inv) : 0;
        xs[s] = amax / 127.0f;
    }
}

/* Decodes row r of a tensor (padded buffer `data`) the way the GEMV kernel does: chunk by chunk through
 * word windows.  generic: use the enumeration even when the fast tables exist.  Also returns the row's
 * dot in the GEMV kernel's form (factor per group, the row scale last): with the int8 activations xq, xs
 * on the fast path, with float32 x on the generic one. */
static double kernel_dequantize(const pvqd_tables *t, const pvq_gemv_plan *gp, const uint8_t *data, size_t rb,
                                int64_t r, int64_t n, float scale, int generic, const float *x, const int8_t *xq,
                                const float *xs, float *out, int *window_fits)
{
    float acc = 0.0f;
    const int W = t->field_bits;
    const int64_t G = n / t->D;
    const uint32_t *words = (const uint32_t *)data;
    for (int64_t g0 = 0; g0 < G; g0 += gp->chunk_groups) {
        int cnt = G - g0 < gp->chunk_groups ? (int)(G - g0) : gp->chunk_groups;
        pvqd_window w = pvqd_chunk_window(r * rb, g0, cnt, W);
        if (w.count > gp->window_words) *window_fits = 0;
        uint32_t win[4096];
        memcpy(win, words + w.first, w.count * sizeof(uint32_t));
        for (int j = 0; j < cnt; j++) {
            uint64_t f = pvqd_field(win, w.bit0 + (uint32_t)j * W, W);
            float *o = out + (g0 + j) * t->D;
            if (t->fast && !generic) {
                uint32_t lo, hi;
                float s = pvqd_group8(t, f, scale, &lo, &hi);
                for (int i = 0; i < 4; i++) o[i] = (float)pvqd_coord(lo, i) * s, o[4 + i] = (float)pvqd_coord(hi, i) * s;
                const float factor = pvqd_factor8(t, f, &lo, &hi);
                uint32_t xw[2];
                memcpy(xw, xq + (g0 + j) * 8, 8);
                acc += factor * xs[(g0 + j) >> 4] * (float)pvqd_dot8_q8(lo, hi, xw[0], xw[1]);
            } else {
                int32_t y[PVQD_MAX_D];
                float s = pvqd_group(t, f, scale, y);
                for (int i = 0; i < t->D; i++) o[i] = (float)y[i] * s;
                s = pvqd_group(t, f, 1.0f, y);
                float d = 0.0f;
                for (int i = 0; i < t->D; i++) d += (float)y[i] * x[(g0 + j) * t->D + i];
                acc += s * d;
            }
        }
    }
    return (double)(scale * acc);
}

static void check_layout(int D, int K, int b, int64_t groups_hint, int rows)
{
    char err[256], what[400];
    uint32_t id = PVQ_TYPE_BASE | (uint32_t)D << 20 | (uint32_t)b << 16 | (uint32_t)K;
    float levels[256];
    for (int i = 0; i < (1 << b); i++) levels[i] = 0.05f + 0.9f * ((float)i + 0.1f * (float)(rnd() % 7)) / (float)(1 << b);
    pvq_codec c;
    if (pvq_codec_init(&c, id, levels, (size_t)1 << b, err, sizeof err)) {
        snprintf(what, sizeof what, "codec D=%d K=%d b=%d: %s", D, K, b, err);
        check(0, what);
        return;
    }
    int64_t G = groups_hint - groups_hint % c.block_groups, n = G * D;
    size_t rb = pvq_row_bytes(&c, n);
    uint8_t *data = calloc(rb * rows + 16, 1);        /* the device copy is padded by 16 bytes too */
    float *ref = malloc(n * sizeof(float)), *got = malloc(n * sizeof(float)), *x = malloc(n * sizeof(float));
    const int64_t steps = (n + PVQD_Q8_STEP - 1) / PVQD_Q8_STEP;
    int8_t *xq = malloc(steps * PVQD_Q8_STEP), *xq_cpu = malloc(steps * PVQD_Q8_STEP);
    float *xs = malloc(steps * sizeof(float)), *xs_cpu = malloc(steps * sizeof(float));
    uint16_t *scales = malloc(rows * sizeof(uint16_t));
    /* the last point: the end of the last class (k1 = K, N(D/2, K) points) where the top level has classes */
    uint64_t last = c.class_base ? c.class_base[c.K] + c.count[(c.D / 2) * (c.K + 1) + c.K] - 1 : c.n_points - 1;
    uint64_t mask = (UINT64_C(1) << c.index_bits) - 1;
    for (int r = 0; r < rows; r++) {
        scales[r] = (uint16_t)(0x2C00 + rnd() % 0x1000);
        for (int64_t g = 0; g < G; g++) {
            /* the first and last points' indices as well as random ones (uniform points) */
            uint64_t idx = g == 0 ? 0 : last;
            if (g > 1)
                do idx = rnd() & mask; while (!pvq_index_is_point(&c, idx));
            put_field(data + r * rb, g, c.field_bits, idx << b | (rnd() & ((1u << b) - 1)));
        }
    }
    for (int64_t i = 0; i < n; i++) x[i] = (float)((double)(rnd() % 2001) / 1000.0 - 1.0);
    kernel_quantize(x, n, xq, xs);
    int same_q8 = 1;
    if (D == 8) {
        /* the CPU's planes: xq_cpu[128 s + 64 h + 4 g + j] = q(x[128 s + 8 g + 4 h + j]) */
        pvq_quantize_x_q8(x, n, xq_cpu, xs_cpu);
        for (int64_t i = 0; i < steps * PVQD_Q8_STEP; i++) {
            int64_t st = i / 128, k = i % 128, g = k / 8, h = k % 8 / 4, j = k % 4;
            same_q8 &= xq[i] == xq_cpu[128 * st + 64 * h + 4 * g + j];
        }
        same_q8 &= !memcmp(xs, xs_cpu, steps * sizeof(float));
    }
    pvq_cuda_tables tab;
    if (pvq_cuda_tables_build(&tab, &c)) { check(0, "tables: out of memory"); return; }
    pvqd_tables t = pvq_cuda_tables_bind(&tab, tab.blob, c.levels);
    /* the random matrices' rank-to-index map: every rank a point's index, in increasing order */
    int ranks_ok = 1;
    for (uint64_t i = 0, prev = 0; i < 4096; i++) {        /* the first 2048 ranks in order, then random ones */
        uint64_t rank = i < 2048 ? i % c.n_points : rnd() % c.n_points, idx = pvqd_index_of_rank(&t, rank);
        ranks_ok &= pvq_index_is_point(&c, idx) && (i == 0 || i >= 2048 || rank == 0 || idx > prev);
        prev = idx;
    }
    ranks_ok &= pvqd_index_of_rank(&t, c.n_points - 1) == last;
    snprintf(what, sizeof what, "D=%d K=%d b=%d: ranks of the random matrices map to points' indices", D, K, b);
    check(ranks_ok, what);
    pvq_gemv_plan gp = pvq_gemv_plan_make(&t, t.fast, rows, 0);
    int exact = 1, exact_generic = 1, fits = 1, dot_ok = 1, gemv_ok = 1;
    for (int r = 0; r < rows; r++) {
        float scale = pvq_half_to_float(scales[r]);
        pvq_dequantize_row_ref(&c, data + r * rb, scale, n, ref);
        double gemv = kernel_dequantize(&t, &gp, data, rb, r, n, scale, 0, x, xq, xs, got, &fits);
        exact &= !memcmp(ref, got, n * sizeof(float));
        double dot = 0, mag = 0;
        for (int64_t i = 0; i < n; i++) dot += (double)got[i] * x[i], mag += fabs((double)got[i] * x[i]);
        float dref = pvq_dot_row_ref(&c, data + r * rb, scale, n, x);
        dot_ok &= fabs(dot - dref) <= 1e-5 * mag + 1e-30;
        /* the fast path's activations are int8: its reference is the CPU's int8 kernel */
        if (t.fast) dref = pvq_dot_row_q8_ref(&c, data + r * rb, scale, n, xq_cpu, xs_cpu);
        gemv_ok &= fabs(gemv - dref) <= 1e-5 * mag + 1e-30;
        if (t.fast) {
            dref = pvq_dot_row_ref(&c, data + r * rb, scale, n, x);
            gemv = kernel_dequantize(&t, &gp, data, rb, r, n, scale, 1, x, xq, xs, got, &fits);
            exact_generic &= !memcmp(ref, got, n * sizeof(float));
            gemv_ok &= fabs(gemv - dref) <= 1e-5 * mag + 1e-30;
        }
    }
    snprintf(what, sizeof what, "D=%d K=%d b=%d W=%d %s path, %d rows of %lld (row %zu bytes): weights bit-identical to pvq_ref",
             D, K, b, c.field_bits, t.fast ? "fast" : "generic", rows, (long long)n, rb);
    check(exact, what);
    if (t.fast) {
        snprintf(what, sizeof what, "D=%d K=%d b=%d generic path on a fast layout: bit-identical", D, K, b);
        check(exact_generic, what);
    }
    snprintf(what, sizeof what, "D=%d K=%d b=%d: chunk windows fit the GEMV plan's %u shared words", D, K, b, gp.window_words);
    check(fits, what);
    snprintf(what, sizeof what, "D=%d K=%d b=%d: dot of decoded weights matches pvq_dot_row_ref (rel 1e-5)", D, K, b);
    check(dot_ok, what);
    snprintf(what, sizeof what, "D=%d K=%d b=%d: the GEMV's regrouped dot (factor tables, row scale last) matches "
             "%s (rel 1e-5)", D, K, b, t.fast ? "pvq_dot_row_q8_ref on the fast path, pvq_dot_row_ref on the generic"
                                              : "pvq_dot_row_ref");
    check(gemv_ok, what);
    if (D == 8) {
        snprintf(what, sizeof what, "D=%d K=%d b=%d: int8 activations identical to pvq_quantize_x_q8's", D, K, b);
        check(same_q8, what);
    }
    if (t.fast) {
        snprintf(what, sizeof what, "D=%d K=%d b=%d: GEMV shared memory with the staged tables (%zu bytes) under 48 KB",
                 D, K, b, gp.smem_bytes);
        check(gp.smem_bytes <= 48 * 1024, what);
    }
    pvq_cuda_tables_free(&tab);
    pvq_codec_free(&c);
    free(data), free(ref), free(got), free(x), free(scales), free(xq), free(xq_cpu), free(xs), free(xs_cpu);
}

static void check_hadamard(void)
{
    char err[256];
    pvq_hadamard_plan hp;
    const int8_t h2[4] = {1, 1, 1, -1}, bad_entry[4] = {1, 2, 1, -1}, not_orth[4] = {1, 1, 1, 1};
    int8_t h4[16];
    for (int a = 0; a < 4; a++)
        for (int j = 0; j < 4; j++) h4[a * 4 + j] = (int8_t)(__builtin_popcount(a & j) & 1 ? -1 : 1);
    check(pvq_hadamard_plan_make(&hp, 4 * 512, h4, 16, 512, 1.0f / sqrtf(2048), err, sizeof err) == 0 &&
              hp.h == 4 && hp.smem_bytes == 2048 * 4, "hadamard plan: 4 x 512 Sylvester base accepted");
    const int8_t one[1] = {1};
    check(pvq_hadamard_plan_make(&hp, 4096, one, 1, 4096, 1.0f / 64, err, sizeof err) == 0 && hp.block == 1024,
          "hadamard plan: h = 1 (pure Sylvester) accepted, 1024 threads");
    check(pvq_hadamard_plan_make(&hp, 1024, h2, 3, 512, 0.03f, err, sizeof err) && strstr(err, "square"),
          "hadamard plan: base of 3 entries refused");
    check(pvq_hadamard_plan_make(&hp, 1024, h2, 4, 500, 0.03f, err, sizeof err) && strstr(err, "power of two"),
          "hadamard plan: p = 500 refused");
    check(pvq_hadamard_plan_make(&hp, 1000, h2, 4, 512, 0.03f, err, sizeof err) && strstr(err, "n_ff"),
          "hadamard plan: h * p != n refused");
    check(pvq_hadamard_plan_make(&hp, 1024, bad_entry, 4, 512, 0.03f, err, sizeof err) && strstr(err, "= 2"),
          "hadamard plan: entry 2 refused");
    check(pvq_hadamard_plan_make(&hp, 1024, not_orth, 4, 512, 0.03f, err, sizeof err) && strstr(err, "B B^T"),
          "hadamard plan: non-orthogonal base refused");
    check(pvq_hadamard_plan_make(&hp, 1024, h2, 4, 512, NAN, err, sizeof err) && strstr(err, "scale"),
          "hadamard plan: NaN scale refused");
}

static void check_launch_shapes(void)
{
    pvqd_tables t = {.D = 8, .K = 14, .gain_bits = 3, .field_bits = 26};
    pvq_gemv_plan g = pvq_gemv_plan_make(&t, 0, 14336, 0);
    check(g.grid * PVQ_GEMV_WARPS >= 14336 && (g.grid - 1) * PVQ_GEMV_WARPS < 14336 && g.block == 128 &&
              g.smem_bytes <= 48 * 1024,
          "gemv plan: 14336 rows, 4 warps a block, shared memory under the 48 KB default");
    g = pvq_gemv_plan_make(&t, 0, 14336, 1056);
    check(g.grid == 1056, "gemv plan: the grid is capped at the resident blocks, warps loop over rows");
    t.field_bits = 56;
    g = pvq_gemv_plan_make(&t, 0, 1, 0);
    check(g.grid == 1 && g.smem_bytes <= 48 * 1024, "gemv plan: widest field (56 bits) fits 48 KB");
    pvq_mma_plan m = pvq_mma_plan_make(8, 4096, 14336, 100);
    check(m.usable && m.grid_x == 224 && m.grid_y == 2 && m.smem_bytes <= 48 * 1024,
          "mma plan: 14336 x 4096 at 100 tokens: 224 x 2 tiles, shared memory under 48 KB");
    check(!pvq_mma_plan_make(8, 4100, 64, 100).usable && !pvq_mma_plan_make(8, 4096, 64, 1).usable &&
              !pvq_mma_plan_make(24, 4096, 64, 100).usable,
          "mma plan: refused for n_in % 64, one token, D not dividing 64 (GEMV per token then)");
    check(pvq_attention_smem_bytes(4096, 128) <= 48 * 1024, "attention plan: 4096 positions fit 48 KB");
}

/* The prefill tiles' token scale: a power of two that brings the largest magnitude into [128, 256), so
 * that a token scaled by it fits fp16 whatever its magnitude (1e5 overflows fp16 unscaled). */
static void check_tile_scale(void)
{
    const float amax[] = {1e5f, 65504.0f, 3e38f, 1.0f, 255.9f, 256.0f, 1e-3f, 1e-30f};
    int ok = 1;
    for (size_t i = 0; i < sizeof amax / sizeof amax[0]; i++) {
        const float s = pvqd_tile_scale(amax[i]), q = amax[i] / s;
        int e;
        ok &= frexpf(s, &e) == 0.5f && q >= 128.0f && q < 256.0f && q * s == amax[i];
    }
    ok &= pvqd_tile_scale(0.0f) == 1.0f && pvqd_tile_scale(INFINITY) == 1.0f && pvqd_tile_scale(NAN) == 1.0f;
    ok &= pvqd_tile_scale(1e-45f) == 0x1p-126f;   /* clamped to a normal power of two */
    check(ok, "tile scale: a power of two, amax / s in [128, 256) from 1e-30 to 3e38; 0, inf, NaN: 1");
}

int main(void)
{
    check_layout(8, 6, 3, 600, 5);      /* preset 2.25 */
    check_layout(8, 14, 3, 600, 5);     /* preset 3.25: 13-byte blocks, rows at every alignment */
    check_layout(8, 29, 4, 520, 5);     /* preset 4.25: 34-bit fields */
    check_layout(8, 127, 2, 300, 3);    /* 47-bit fields: the generic path */
    check_layout(8, 200, 3, 300, 3);    /* K > 127: generic path */
    check_layout(16, 26, 5, 300, 3);    /* D = 16 */
    check_layout(4, 40, 1, 301, 3);     /* odd field widths */
    check_layout(64, 9, 8, 40, 2);      /* widest D */
    check_hadamard();
    check_launch_shapes();
    check_tile_scale();
    printf("%s\n", failures ? "FAILED" : "all host checks passed");
    return failures ? 1 : 0;
}
