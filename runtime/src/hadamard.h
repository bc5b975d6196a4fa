/* The online Hadamard transform the runtime applies to the FFN hidden state before ffn_down when a
 * file's pvq.rotation.ffn_hadamard is set (docs/rotation.md, "The online transform H"):
 *     y[a*p + j] = scale * sum_{a', j'} B[a][a'] * (-1)^popcount(j & j') * f[a'*p + j']
 * with n = h * p, p a power of two, B the h x h base (-1/0/+1) stored in the file. Done in two
 * steps: fast Walsh-Hadamard butterflies on each contiguous block of p (O(n log p)), then B mixes
 * the blocks column by column (O(n h)), then one multiply by scale. The optimized version performs
 * the same float operations in the same order per element, so it matches the reference bit for bit. */
#ifndef PVQ_HADAMARD_H
#define PVQ_HADAMARD_H

#include <stddef.h>
#include <stdint.h>

#define HADAMARD_MAX_H 1024   /* the largest base any plan of docs/rotation.md needs is 344 */

typedef struct hadamard_plan {
    int n, h, p;
    float scale;
    int8_t *base; /* h * h, row-major, owned */
} hadamard_plan;

/* Checks the file's values (h * h == n_base, h * p == n, p a power of two, entries in {-1, 0, 1},
 * B B^T = r I, scale = 1 / sqrt(r p)) and copies B. Returns 0, or -1 with a message. */
int hadamard_plan_init(hadamard_plan *pl, int64_t n, int64_t p, const int8_t *base, uint64_t n_base, float scale,
                       char *err, size_t err_len);
void hadamard_plan_free(hadamard_plan *pl);

/* x[0..n) <- H x in place. */
void hadamard_ref(const hadamard_plan *pl, float *x);
void hadamard_avx2(const hadamard_plan *pl, float *x);
/* The active kernel set's (types.h, isa_kernels). */
void hadamard_apply(const hadamard_plan *pl, float *x);

#endif
