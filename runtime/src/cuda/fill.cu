/* Random device data for benchmarks and the self test, from a counter-based hash (splitmix64), so a
 * seed gives the same data on every GPU and the host can recompute nothing it does not copy back. */
#include "common.cuh"
#include "kernels.h"

__device__ __forceinline__ uint64_t mix64(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* One thread per block of block_groups groups (whole bytes); blocks never straddle rows.  Uniform points:
 * a uniform rank below N(D, K), mapped to its index (the format's classes may leave codes between them). */
__global__ void fill_pvq_kernel(uint8_t *data, uint64_t n_blocks, pvqd_tables t, int block_groups, uint64_t n_points,
                                uint64_t seed)
{
    const uint64_t blk = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (blk >= n_blocks) return;
    const int W = t.field_bits, b = t.gain_bits, bytes = block_groups * W / 8;
    uint8_t buf[64] = {0};
    for (int j = 0; j < block_groups; j++) {
        const uint64_t r = mix64(seed ^ (blk * block_groups + j) * 0xD1B54A32D192ED03ull);
        const uint64_t field = pvqd_index_of_rank(&t, r % n_points) << b | (mix64(r) & ((1u << b) - 1));
        for (int i = 0; i < W; i++)
            if ((field >> i) & 1) buf[(j * W + i) >> 3] |= (uint8_t)(1u << ((j * W + i) & 7));
    }
    uint8_t *dst = data + blk * bytes;
    for (int i = 0; i < bytes; i++) dst[i] = buf[i];
}

extern "C" cudaError_t pvqk_fill_random(uint8_t *data, int64_t rows, size_t row_bytes, const pvqd_tables *t,
                                        int block_groups, uint64_t n_points, uint64_t seed)
{
    const uint64_t n_blocks = (uint64_t)rows * row_bytes / (uint64_t)(block_groups * t->field_bits / 8);
    fill_pvq_kernel<<<(unsigned)((n_blocks + 255) / 256), 256>>>(data, n_blocks, *t, block_groups, n_points, seed);
    return pvqk_launched("fill_pvq_kernel");
}

__global__ void fill_uniform_kernel(float *f32, uint16_t *f16, size_t n, float lo, float hi, uint64_t seed)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float u = (float)(mix64(seed ^ i * 0xD1B54A32D192ED03ull) >> 40) * (1.0f / 16777216.0f);
    const float v = lo + (hi - lo) * u;
    if (f32) f32[i] = v;
    else f16[i] = float_to_half_bits(v);
}

extern "C" cudaError_t k_fill_uniform_f32(float *out, size_t n, float lo, float hi, uint64_t seed)
{
    fill_uniform_kernel<<<(unsigned)((n + 255) / 256), 256>>>(out, NULL, n, lo, hi, seed);
    return pvqk_launched("fill_uniform_kernel");
}

extern "C" cudaError_t k_fill_uniform_f16(uint16_t *out, size_t n, float lo, float hi, uint64_t seed)
{
    fill_uniform_kernel<<<(unsigned)((n + 255) / 256), 256>>>(NULL, out, n, lo, hi, seed);
    return pvqk_launched("fill_uniform_kernel");
}
