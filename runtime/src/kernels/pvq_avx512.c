/* AVX-512 (F, BW, VL, VBMI, VNNI) kernels of the PVQ type for D == 8 (codec->fast): sixteen groups
 * per step, one per 32-bit lane, no scalar work.
 *
 * Per 8-group chunk (W bytes): one masked load, one vpermb placing each field's bytes in a qword,
 * one variable shift and a mask extract the eight fields.  The split k1 is a binary search in the
 * cumulative table held in registers (vpermi2d), every per-k1 constant is a register permute, the
 * division is a float reciprocal product with one correction, the halves are two gathers from the
 * 4-dim point table, ||y||^2 is two vpdpbusd.  Results equal pvq_ref.c's: dequantize bit-identical,
 * dot up to summation order. */
#include "pvq_codec.h"

#include <immintrin.h>

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni,fma")))

int pvq_avx512_supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi") &&
           __builtin_cpu_supports("avx512vnni");
}

/* A table of up to ntab (power of two) 32-bit entries, kept in registers when it has <= 32. */
typedef struct { __m512i a, b; const uint32_t *t; int ntab; } table;

TARGET static inline table table_load(const void *t, int ntab)
{
    table r = { _mm512_loadu_si512(t), ntab > 16 ? _mm512_loadu_si512((const uint32_t *)t + 16)
                                                 : _mm512_setzero_si512(), t, ntab };
    return r;
}

TARGET static inline __m512i lookup(const table *t, __m512i k)
{
    if (t->ntab <= 16) return _mm512_permutexvar_epi32(k, t->a);
    if (t->ntab <= 32) return _mm512_permutex2var_epi32(t->a, k, t->b);
    return _mm512_i32gather_epi32(k, t->t, 4);
}

typedef struct {
    table cum, n2, inv, lo, hi, levels;
    __m512i perm, shift, field_mask, code_mask;
    int W, b, steps;
} kernel;

TARGET static inline void kernel_init(kernel *k, const pvq_codec *c)
{
    const pvq_fast8 *f = c->fast;
    k->cum = table_load(f->cum, f->ntab);
    k->n2 = table_load(f->n2, f->ntab);
    k->inv = table_load(f->inv_n2, f->ntab);
    k->lo = table_load(f->base_lo, f->ntab);
    k->hi = table_load(f->base_hi, f->ntab);
    k->levels = table_load(c->levels, 1 << c->gain_bits < 16 ? 16 : 1 << c->gain_bits);
    k->perm = _mm512_loadu_si512(f->field_perm);
    k->shift = _mm512_loadu_si512(f->field_shift);
    k->W = c->field_bits;
    k->b = c->gain_bits;
    k->field_mask = _mm512_set1_epi64((long long)((UINT64_C(1) << c->field_bits) - 1));
    k->code_mask = _mm512_set1_epi32((1 << c->gain_bits) - 1);
    k->steps = f->ntab;
}

/* The eight fields of the chunk at p (exactly W bytes read) as 64-bit lanes. */
TARGET static inline __m512i fields8(const kernel *k, const uint8_t *p)
{
    __m512i bytes = _mm512_maskz_loadu_epi8(_cvtu64_mask64((UINT64_C(1) << k->W) - 1), p);
    __m512i v = _mm512_permutexvar_epi8(k->perm, bytes);
    return _mm512_and_si512(_mm512_srlv_epi64(v, k->shift), k->field_mask);
}

/* Sixteen groups (chunks at p and p + W): halves lo/hi as int8 x 4 per lane, weight scales s. */
TARGET static inline void decode16(const kernel *k, const pvq_codec *c, const uint8_t *p, float scale,
                                   __m512i *lo, __m512i *hi, __m512 *s)
{
    __m512i f0 = fields8(k, p), f1 = fields8(k, p + k->W);
    __m512i idx = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(_mm512_srli_epi64(f0, k->b))),
                                     _mm512_cvtepi64_epi32(_mm512_srli_epi64(f1, k->b)), 1);
    __m512i code = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(f0)),
                                      _mm512_cvtepi64_epi32(f1), 1);
    code = _mm512_and_si512(code, k->code_mask);

    /* k1 = largest j with cum[j] <= idx (cum[0] = 0, entries past K are above every index). */
    __m512i k1 = _mm512_setzero_si512();
    for (int step = k->steps / 2; step; step /= 2) {
        __m512i cand = _mm512_add_epi32(k1, _mm512_set1_epi32(step));
        __mmask16 ok = _mm512_cmple_epi32_mask(lookup(&k->cum, cand), idx);
        k1 = _mm512_mask_mov_epi32(k1, ok, cand);
    }
    __m512i r = _mm512_sub_epi32(idx, lookup(&k->cum, k1));
    __m512i n2 = lookup(&k->n2, k1);
    __m512 inv = _mm512_castsi512_ps(lookup(&k->inv, k1));
    __m512i q = _mm512_cvttps_epi32(_mm512_mul_ps(_mm512_cvtepi32_ps(r), inv));
    __m512i rem = _mm512_sub_epi32(r, _mm512_mullo_epi32(q, n2));
    __mmask16 neg = _mm512_cmplt_epi32_mask(rem, _mm512_setzero_si512());
    q = _mm512_mask_sub_epi32(q, neg, q, _mm512_set1_epi32(1));
    rem = _mm512_mask_add_epi32(rem, neg, rem, n2);
    __mmask16 over = _mm512_cmpge_epi32_mask(rem, n2);
    q = _mm512_mask_add_epi32(q, over, q, _mm512_set1_epi32(1));
    rem = _mm512_mask_sub_epi32(rem, over, rem, n2);

    const int *lut = (const int *)c->fast->lut4;
    *lo = _mm512_i32gather_epi32(_mm512_add_epi32(lookup(&k->lo, k1), q), lut, 4);
    *hi = _mm512_i32gather_epi32(_mm512_add_epi32(lookup(&k->hi, k1), rem), lut, 4);

    __m512i alo = _mm512_abs_epi8(*lo), ahi = _mm512_abs_epi8(*hi);     /* |y| <= 127 */
    __m512i sq = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), alo, alo), ahi, ahi);
    __m512 level = _mm512_castsi512_ps(lookup(&k->levels, code));
    __m512 gain = _mm512_mul_ps(_mm512_set1_ps(scale), level);
    *s = _mm512_div_ps(gain, _mm512_sqrt_ps(_mm512_cvtepi32_ps(sq)));
}

/* Weights of groups 2t, 2t+1 of the step (t = 0..7) as sixteen floats in row order. */
TARGET static inline __m512 pair_weights(__m512i a, __m512i b, __m512 s, int t)
{
    /* unpacklo: 128-bit lane l holds groups 4l, 4l+1; unpackhi: 4l+2, 4l+3 (int8 x 8 each). */
    __m512i u = (t & 1) ? _mm512_unpackhi_epi32(a, b) : _mm512_unpacklo_epi32(a, b);
    __m128i bytes;
    switch (t >> 1) {
    case 0: bytes = _mm512_castsi512_si128(u); break;
    case 1: bytes = _mm512_extracti32x4_epi32(u, 1); break;
    case 2: bytes = _mm512_extracti32x4_epi32(u, 2); break;
    default: bytes = _mm512_extracti32x4_epi32(u, 3); break;
    }
    __m512 y = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
    const int g = 2 * t;
    __m512i sel = _mm512_set_epi32(g + 1, g + 1, g + 1, g + 1, g + 1, g + 1, g + 1, g + 1,
                                   g, g, g, g, g, g, g, g);
    return _mm512_mul_ps(y, _mm512_permutexvar_ps(sel, s));
}

TARGET void pvq_dequantize_row_avx512(const pvq_codec *c, const uint8_t *row, float scale, int64_t n,
                                      float *out)
{
    kernel k;
    kernel_init(&k, c);
    const int64_t G = n / 8;
    int64_t g0 = 0;
    for (; g0 + 16 <= G; g0 += 16) {
        __m512i lo, hi;
        __m512 s;
        decode16(&k, c, row + g0 / 8 * k.W, scale, &lo, &hi, &s);
        for (int t = 0; t < 8; t++)
            _mm512_storeu_ps(out + (g0 + 2 * t) * 8, pair_weights(lo, hi, s, t));
    }
    pvq_dequantize_groups_ref(c, row, g0, G, scale, out);
}

TARGET float pvq_dot_row_avx512(const pvq_codec *c, const uint8_t *row, float scale, int64_t n,
                                const float *x)
{
    kernel k;
    kernel_init(&k, c);
    const int64_t G = n / 8;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t g0 = 0;
    for (; g0 + 16 <= G; g0 += 16) {
        __m512i lo, hi;
        __m512 s;
        decode16(&k, c, row + g0 / 8 * k.W, scale, &lo, &hi, &s);
        const float *xg = x + g0 * 8;
        for (int t = 0; t < 8; t += 2) {
            acc0 = _mm512_fmadd_ps(pair_weights(lo, hi, s, t), _mm512_loadu_ps(xg + t * 16), acc0);
            acc1 = _mm512_fmadd_ps(pair_weights(lo, hi, s, t + 1), _mm512_loadu_ps(xg + t * 16 + 16), acc1);
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) + pvq_dot_groups_ref(c, row, g0, G, scale, x);
}
