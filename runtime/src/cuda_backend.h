/* The boundary between libpvq.so and the CUDA backend (build-cuda/libpvq_cuda.so), which libpvq.so loads
 * with dlopen when a context asks for n_gpu_layers != 0 (api.c, docs/cuda.md).  Plain C types only: the
 * backend loads the model file itself, so no struct of model.h crosses between two separately built
 * libraries.  Bump PVQ_CUDA_BACKEND_ABI whenever this table changes. */
#ifndef PVQ_CUDA_BACKEND_H
#define PVQ_CUDA_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#define PVQ_CUDA_BACKEND_ABI 1
#define PVQ_CUDA_BACKEND_SYMBOL "pvq_cuda_backend_v1"

typedef struct pvq_cuda_session pvq_cuda_session;

typedef struct {
    int abi; /* PVQ_CUDA_BACKEND_ABI */
    /* 0 when device 0 is usable, else -1 with the reason (no driver, no device, too old). */
    int (*probe)(char *why, size_t why_len);
    /* The model at path on the device with a KV cache of n_ctx positions and batches of n_batch tokens. */
    int (*open)(const char *path, int n_ctx, int n_batch, pvq_cuda_session **out, char *err, size_t err_len);
    /* n (<= n_batch) tokens after the cached ones; the last token's logits (n_vocab floats) into logits. */
    int (*eval)(pvq_cuda_session *s, const int32_t *tokens, int n, float *logits, char *err, size_t err_len);
    /* Forgets the cache from position n_keep on. */
    void (*truncate)(pvq_cuda_session *s, int n_keep);
    void (*close)(pvq_cuda_session *s);
} pvq_cuda_backend;

/* libpvq_cuda.so exports `const pvq_cuda_backend pvq_cuda_backend_v1`. */

#endif
