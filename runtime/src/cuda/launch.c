/* What every kernel launcher and model preparation shares: the launch check (and the PVQ_CUDA_SYNC=1
 * mode that synchronises after each kernel, so that a fault is blamed on the kernel that caused it and not
 * on a later call), error messages that name that kernel, and the shared-memory limit that only rises. */
#include "errmsg.h"
#include "kernels.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local const char *failed_kernel;

int pvqk_sync_mode(void)
{
    static int mode = -1;   /* read once: the environment does not change under a running model */
    if (mode < 0) {
        const char *s = getenv("PVQ_CUDA_SYNC");
        mode = s && *s && strcmp(s, "0");
    }
    return mode;
}

cudaError_t pvqk_launched(const char *kernel)
{
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess && pvqk_sync_mode()) e = cudaDeviceSynchronize();
    if (e != cudaSuccess) failed_kernel = kernel;
    return e;
}

int pvqk_fail(char *err, size_t err_len, const char *what, cudaError_t e)
{
    const char *k = failed_kernel;
    failed_kernel = NULL;
    if (k) return err_fail(err, err_len, "CUDA: %s: %s (kernel %s)", what, cudaGetErrorString(e), k);
    /* a fault found by a later call: only the synchronising mode can tell which kernel it was */
    return err_fail(err, err_len, "CUDA: %s: %s%s", what, cudaGetErrorString(e),
                    pvqk_sync_mode() ? "" : " (PVQ_CUDA_SYNC=1 names the kernel that failed)");
}

/* Every weight and context prepares the kernels for its own need; a smaller need prepared later must
 * not lower the limit that launches planned for an earlier, larger one rely on.  The lock keeps two
 * threads loading models from undoing each other's raise. */
cudaError_t pvqk_raise_smem_limit(const void *kernel, size_t bytes)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    struct cudaFuncAttributes a;
    pthread_mutex_lock(&lock);
    cudaError_t e = cudaFuncGetAttributes(&a, kernel);
    if (e == cudaSuccess && bytes > (size_t)a.maxDynamicSharedSizeBytes)
        e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    pthread_mutex_unlock(&lock);
    return e;
}
