/* CK(call): a failed CUDA runtime call or kernel launcher records its name, CUDA's message and the
 * kernel that failed (pvqk_fail) in err (err, err_len in scope) and jumps to the function's `out:`
 * label, where it frees what it holds. */
#ifndef PVQ_CUDA_CHECK_H
#define PVQ_CUDA_CHECK_H

#include "kernels.h"

#include <cuda_runtime.h>

#define CK(call)                                                                                       \
    do {                                                                                               \
        cudaError_t e_ = (call);                                                                       \
        if (e_ != cudaSuccess) {                                                                       \
            pvqk_fail(err, err_len, #call, e_);                                                        \
            goto out;                                                                                  \
        }                                                                                              \
    } while (0)

#endif
