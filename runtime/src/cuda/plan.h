/* Host-side planning of the CUDA kernels, in plain C so it is built and tested without a GPU:
 * the device table blob of a PVQ layout, the launch shapes of the kernels and their shared memory,
 * and the checks of the online Hadamard transform's metadata. */
#ifndef PVQ_CUDA_PLAN_H
#define PVQ_CUDA_PLAN_H

#include "decode.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "kernels/pvq_codec.h"

/* One PVQ layout's tables in one allocation: offsets in bytes from the blob's start (8-aligned).
 * The gain levels are per tensor and not part of the blob: every tensor of a layout shares it. */
typedef struct pvq_cuda_tables {
    pvqd_tables shape;         /* D, K, b, W, fast, ntab; pointers unset (see pvq_cuda_tables_bind) */
    size_t off_cum, off_n2, off_base_lo, off_base_hi, off_lut4, off_count, off_inv_n2, off_inv_n2d, off_bucket,
        off_inv_sqrt, off_class_base;
    int has_class_base;
    size_t bytes;
    uint8_t *blob;             /* host copy, malloc'd */
} pvq_cuda_tables;

/* Builds the blob from a codec (pvq_codec_init).  Returns 0, or -1 when out of memory. */
int pvq_cuda_tables_build(pvq_cuda_tables *t, const pvq_codec *c);
void pvq_cuda_tables_free(pvq_cuda_tables *t);
/* The tables with pointers into a copy of the blob at base and a tensor's levels (host or device). */
pvqd_tables pvq_cuda_tables_bind(const pvq_cuda_tables *t, const void *base, const float *levels);

/* Batch-1 GEMV: each warp owns rows, and walks a row in chunks of 32 lanes x GEMV_GROUPS_PER_LANE
 * groups whose bytes it first stages in its slice of shared memory.  On the fast path the block also
 * copies the small tables (per-k1 tables, levels, the bucket table) to shared memory, in this order:
 * windows, inv_n2d (8-aligned), cum, n2, base_lo, base_hi, inv_n2, levels, bucket_k1. */
#define PVQ_GEMV_WARPS 4
#define PVQ_GEMV_GROUPS_PER_LANE 8
typedef struct {
    unsigned grid, block;       /* blocks of PVQ_GEMV_WARPS warps, one row per warp per step */
    int chunk_groups;           /* groups per chunk */
    unsigned window_words;      /* shared words per warp: the widest chunk window */
    size_t tables_offset;       /* bytes of the windows, rounded to 8: where the staged tables start */
    size_t smem_bytes;          /* dynamic shared memory per block */
} pvq_gemv_plan;
/* fast: stage the fast path's tables (t->fast and not forced onto the generic path).  Warps loop over
 * rows, so a block stages the tables once for many rows: the grid is at most max_blocks (the blocks
 * the device runs at once, from the occupancy API; 0: one block per PVQ_GEMV_WARPS rows). */
pvq_gemv_plan pvq_gemv_plan_make(const pvqd_tables *t, int fast, int64_t rows, unsigned max_blocks);
size_t pvq_gemv_staged_bytes(const pvqd_tables *t);

/* Prefill: tensor-core tiles (WMMA 16x16x16, fp16 in, fp32 accumulate).  A block decodes a tile of
 * PVQ_MMA_ROWS weight rows x PVQ_MMA_K columns to fp16 in shared memory, converts PVQ_MMA_TOKENS
 * activation rows, and multiplies; applicable when n_in % PVQ_MMA_K == 0 and PVQ_MMA_K % D == 0. */
#define PVQ_MMA_ROWS 64
#define PVQ_MMA_TOKENS 64
#define PVQ_MMA_K 64
#define PVQ_MMA_WARPS 4
typedef struct {
    int usable;
    unsigned grid_x, grid_y, block;  /* grid_x over row tiles, grid_y over token tiles */
    size_t smem_bytes;
} pvq_mma_plan;
pvq_mma_plan pvq_mma_plan_make(int D, int64_t n_in, int64_t rows, int n_tokens);

/* The online Hadamard transform of docs/rotation.md: n = h * p, B (h x h, entries -1/0/+1). */
typedef struct {
    int h, p;
    float scale;
    const int8_t *base;         /* h * h, row-major */
    unsigned block;             /* threads per token */
    size_t smem_bytes;          /* the token's n floats */
} pvq_hadamard_plan;
/* Checks the metadata as docs/rotation.md asks (h * h == len, h * p == n, p a power of two,
 * entries in {-1, 0, 1}, scale finite and > 0, B B^T = r I).  Returns 0, or -1 with a message. */
int pvq_hadamard_plan_make(pvq_hadamard_plan *hp, int64_t n, const int8_t *base, size_t base_len, int p,
                           float scale, char *err, size_t errlen);

/* Attention: one block per (head, token); scores for every cached position in shared memory. */
#define PVQ_ATTN_THREADS 128
size_t pvq_attention_smem_bytes(int n_ctx, int head_dim);

#ifdef __cplusplus
}
#endif

#endif
