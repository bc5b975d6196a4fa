/* CK(call): a failed CUDA runtime call records its name and CUDA's message in err (err, err_len in scope)
 * and jumps to the function's `out:` label, where it frees what it holds. */
#ifndef PVQ_CUDA_CHECK_H
#define PVQ_CUDA_CHECK_H

#include "errmsg.h"

#include <cuda_runtime.h>

#define CK(call)                                                                                       \
    do {                                                                                               \
        cudaError_t e_ = (call);                                                                       \
        if (e_ != cudaSuccess) {                                                                       \
            err_fail(err, err_len, "CUDA: %s: %s", #call, cudaGetErrorString(e_));                     \
            goto out;                                                                                  \
        }                                                                                              \
    } while (0)

#endif
