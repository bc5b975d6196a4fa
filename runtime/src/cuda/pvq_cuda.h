/* The CUDA backend's C interface: device detection, a model's weights and KV cache on the GPU, the
 * forward pass there, and the kernel self test and benchmarks.  Every function reports failure with
 * a message in the caller's buffer and a non-zero return; nothing exits or aborts. */
#ifndef PVQ_CUDA_H
#define PVQ_CUDA_H

#include "model.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int count;                /* devices the runtime sees */
    char name[256];
    int cc_major, cc_minor;
    size_t total_mem;
    int sm_count;
    int runtime_version, driver_version;
} pvq_cuda_device;

/* Selects device 0 when it is usable (compute capability 8.0 or newer: the tensor-core tiles use fp16
 * WMMA and the build carries sm_90 code and compute_80 PTX).  Returns 0, or -1 with the reason in why:
 * no driver, no device, or a device too old. */
int pvq_cuda_probe(pvq_cuda_device *d, char *why, size_t why_len);

typedef struct pvq_cuda_model pvq_cuda_model;

/* Copies a loaded model (model.c) to the device with a KV cache of n_ctx positions and batches of up
 * to n_batch tokens.  PVQ weights take their scales and gain levels from the file ("<name>.pvq_scale",
 * "pvq.gain_levels.<name>"); the FFN Hadamard transform from "pvq.rotation.ffn_hadamard*". */
int pvq_cuda_model_load(const model *m, int n_ctx, int n_batch, pvq_cuda_model **out, char *err, size_t err_len);

/* A model of the given shape with random weights (PVQ layout `pvq_type` for every matrix, F16
 * embeddings), for decode benchmarks and the self test.  hadamard_h * hadamard_p == ffn_dim gives
 * the FFN transform's cost with a random +-1 base (timing only); hadamard_h = 0: no transform. */
typedef struct {
    int n_layer, dim, n_head, n_head_kv, ffn_dim, n_vocab, hadamard_h, hadamard_p;
    uint32_t pvq_type;
} pvq_cuda_random_shape;
int pvq_cuda_model_random(const pvq_cuda_random_shape *s, int n_ctx, int n_batch, uint64_t seed,
                          pvq_cuda_model **out, char *err, size_t err_len);

/* Runs n (<= n_batch) tokens after the cached ones; logits (n_vocab floats) of the last token are
 * copied to `logits` when it is not NULL.  Single tokens replay a CUDA graph of the whole step.
 * Kernels go to the calling thread's default stream (the library is built with per-thread default
 * streams); a model belongs to one thread at a time. */
int pvq_cuda_forward(pvq_cuda_model *g, const int32_t *tokens, int n, float *logits, char *err, size_t err_len);
int pvq_cuda_n_past(const pvq_cuda_model *g);
/* Forgets the cache from position n_keep on (later tokens overwrite it). */
void pvq_cuda_truncate(pvq_cuda_model *g, int n_keep);
/* Whether decode steps run as a captured CUDA graph (PVQ_CUDA_GRAPHS=0 turns it off). */
int pvq_cuda_uses_graph(const pvq_cuda_model *g);
/* on: PVQ weights meet float32 activations on the GEMV's generic path, prompts included (no int8
 * activations, no fp16 tiles): the arithmetic of the CPU's pvq_f32_activations, for comparisons. */
void pvq_cuda_set_f32_activations(pvq_cuda_model *g, int on);
size_t pvq_cuda_weight_bytes(const pvq_cuda_model *g);
void pvq_cuda_model_free(pvq_cuda_model *g);

/* Kernels against host references on random data (selftest.c); prints one line per check.
 * Returns the number of failed checks, or -1 with a message when the device fails. */
int pvq_cuda_selftest(char *err, size_t err_len);

/* Benchmarks (bench.c): print their tables on stdout.  Return 0, or -1 with a message. */
int pvq_cuda_bench_gemv(int reps, char *err, size_t err_len);
int pvq_cuda_bench_decode(uint32_t pvq_type, int n_tokens, char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif
