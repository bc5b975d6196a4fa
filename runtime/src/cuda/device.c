/* Device detection: a clear reason when no usable GPU is there. */
#include "pvq_cuda.h"

#include <cuda_runtime_api.h>
#include <stdio.h>
#include <string.h>

int pvq_cuda_probe(pvq_cuda_device *d, char *why, size_t why_len)
{
    memset(d, 0, sizeof *d);
    cudaRuntimeGetVersion(&d->runtime_version);
    cudaDriverGetVersion(&d->driver_version);  /* 0 when no driver is installed */
    cudaError_t e = cudaGetDeviceCount(&d->count);
    if (e != cudaSuccess) {
        snprintf(why, why_len, "no CUDA device: cudaGetDeviceCount failed: %s (%s)%s", cudaGetErrorString(e),
                 cudaGetErrorName(e), d->driver_version == 0 ? "; no CUDA driver is installed" : "");
        d->count = 0;
        cudaGetLastError();
        return -1;
    }
    if (d->count == 0) {
        snprintf(why, why_len, "no CUDA device: the driver reports none");
        return -1;
    }
    struct cudaDeviceProp p;
    if ((e = cudaGetDeviceProperties(&p, 0)) != cudaSuccess || (e = cudaSetDevice(0)) != cudaSuccess) {
        snprintf(why, why_len, "no usable CUDA device: device 0: %s", cudaGetErrorString(e));
        return -1;
    }
    snprintf(d->name, sizeof d->name, "%s", p.name);
    d->cc_major = p.major, d->cc_minor = p.minor;
    d->total_mem = p.totalGlobalMem;
    d->sm_count = p.multiProcessorCount;
    if (p.major < 8) {
        snprintf(why, why_len, "no usable CUDA device: %s has compute capability %d.%d, 8.0 or newer is needed",
                 p.name, p.major, p.minor);
        return -1;
    }
    return 0;
}
