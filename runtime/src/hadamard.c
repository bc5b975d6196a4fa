/* The online Hadamard transform: plan checks and the scalar reference (see hadamard.h). */
#include "hadamard.h"
#include "errmsg.h"
#include "types.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int hadamard_plan_init(hadamard_plan *pl, int64_t n, int64_t p, const int8_t *base, uint64_t n_base, float scale,
                       char *err, size_t err_len) {
    memset(pl, 0, sizeof *pl);
    int64_t h = 1;
    while ((uint64_t)(h * h) < n_base && h < HADAMARD_MAX_H) h++;
    if ((uint64_t)(h * h) != n_base)
        return err_fail(err, err_len, "ffn Hadamard: base has %llu entries, not a square of at most %d x %d",
                        (unsigned long long)n_base, HADAMARD_MAX_H, HADAMARD_MAX_H);
    if (p < 1 || (p & (p - 1)) || h * p != n)
        return err_fail(err, err_len, "ffn Hadamard: %lld x %lld (base x power of two) does not give the FFN width %lld",
                        (long long)h, (long long)p, (long long)n);
    for (uint64_t i = 0; i < n_base; i++)
        if (base[i] < -1 || base[i] > 1)
            return err_fail(err, err_len, "ffn Hadamard: base entry %d is not -1, 0 or 1", base[i]);
    int r = 0;
    for (int64_t j = 0; j < h; j++) r += base[j] != 0;
    for (int64_t a = 0; a < h; a++)
        for (int64_t b = 0; b < h; b++) {
            int dot = 0;
            for (int64_t j = 0; j < h; j++) dot += base[a * h + j] * base[b * h + j];
            if (dot != (a == b ? r : 0))
                return err_fail(err, err_len, "ffn Hadamard: base rows %lld and %lld are not orthogonal with %d nonzeros",
                                (long long)a, (long long)b, r);
        }
    if (!isfinite(scale) || fabs((double)scale * sqrt((double)r * (double)p) - 1.0) > 1e-6)
        return err_fail(err, err_len, "ffn Hadamard: scale %g is not 1/sqrt(%d * %lld)", (double)scale, r, (long long)p);
    if (!(pl->base = malloc((size_t)n_base))) return err_fail(err, err_len, "out of memory");
    memcpy(pl->base, base, (size_t)n_base);
    pl->n = (int)n, pl->h = (int)h, pl->p = (int)p, pl->scale = scale;
    return 0;
}

void hadamard_plan_free(hadamard_plan *pl) {
    free(pl->base);
    memset(pl, 0, sizeof *pl);
}

void hadamard_ref(const hadamard_plan *pl, float *x) {
    int h = pl->h, p = pl->p;
    for (int a = 0; a < h; a++) {
        float *blk = x + (size_t)a * p;
        for (int len = 1; len < p; len *= 2)
            for (int i = 0; i < p; i++)
                if (!(i & len)) {
                    float u = blk[i], v = blk[i + len];
                    blk[i] = u + v;
                    blk[i + len] = u - v;
                }
    }
    if (h == 1) {
        for (int i = 0; i < p; i++) x[i] *= pl->scale;
        return;
    }
    float col[HADAMARD_MAX_H];
    for (int j = 0; j < p; j++) {
        for (int a = 0; a < h; a++) col[a] = x[(size_t)a * p + j];
        for (int a = 0; a < h; a++) {
            const int8_t *row = pl->base + (size_t)a * h;
            float acc = 0.0f;
            for (int b = 0; b < h; b++) {
                if (row[b] > 0) acc += col[b];
                else if (row[b] < 0) acc -= col[b];
            }
            x[(size_t)a * p + j] = acc * pl->scale;
        }
    }
}

void hadamard_apply(const hadamard_plan *pl, float *x) {
    isa_kernels_active()->hadamard(pl, x);
}
