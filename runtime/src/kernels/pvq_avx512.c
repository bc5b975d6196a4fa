/* AVX-512 (F, BW, VL, VBMI, VNNI) kernels of the PVQ type for D == 8 and K <= PVQ_ARITH_MAX_K
 * (pvq_closed_form; other layouts run the table-driven scalar kernels): sixteen groups per step, one
 * per 32-bit lane, no scalar work, no gather.
 *
 * Fields: one masked load and one vpermb place each field's bytes in its lane (a dword when every
 * field fits one after its bit offset, else a qword per field, eight per chunk), then a variable
 * shift and a mask.  The class k1 is one byte-table lookup of the index's top bits (the classes are
 * aligned; a binary search in the cumulative table where they are dense), every per-k1 constant is a
 * register permute, the division is a float reciprocal product (corrected once unless exact); the
 * halves split by two lookups of their colex ranks in word lanes and their pairs are quarter-arcs in
 * byte lanes (halves16, docs/format.md); ||y||^2 is two vpdpbusd;
 * float dots take 1/||y|| from rsqrt14 and a Newton step instead of the format's sqrt and divide.
 * Outputs: floats (dequantize: bit-identical to pvq_ref.c), a float dot (up to summation order), or
 * an integer dot with Q8 activations (pvq_quantize_x_q8), where the point bytes meet the activation
 * bytes in vpdpbusd without ever becoming floats, bit-identical to pvq_dot_row_q8_ref. */
#include "pvq_codec.h"

#include <immintrin.h>

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

/* Asks for the `bytes` row bytes 2 KB past p, which the steps read soon: with the hardware prefetcher alone a
 * matrix streamed from memory decoded at 0.6-0.9x of the same matrix in cache (docs/benchmarks.md; the AVX2
 * kernels, slower, gained nothing from it). */
INLINE void prefetch_ahead(const uint8_t *p, int bytes)
{
    for (int line = 0; line < bytes; line += 64) _mm_prefetch((const char *)p + 2048 + line, _MM_HINT_T0);
}

/* A table of ntab (16 or 32) 32-bit entries in registers. */
typedef struct { __m512i a, b; } table;

TARGET INLINE table table_load(const void *t, int ntab)
{
    table r = { _mm512_loadu_si512(t), ntab > 16 ? _mm512_loadu_si512((const uint32_t *)t + 16)
                                                 : _mm512_setzero_si512() };
    return r;
}

/* t[k]; ntab is a constant after inlining in every caller, so one path remains. */
TARGET INLINE __m512i lookup(const table *t, __m512i k, int ntab)
{
    if (ntab <= 16) return _mm512_permutexvar_epi32(k, t->a);
    return _mm512_permutex2var_epi32(t->a, k, t->b);
}

typedef struct {
    table cum, n2, inv, levels, k_pair;
    __m512i perm, shift, field_mask, perm32, shift32, field_mask32, code_mask;
    __m512i bucket_a, bucket_b, bucket_c, bucket_d, c3_a, c3_b, c3_c, c3_d, c2_a, c2_b;
    __m512i binom3_next, binom3, binom2_next, binom2, pair_sel, lo_sel, hi_sel;
    table base_lo, base_hi;     /* the gathered halves: offsets of P(4, k1) and P(4, K - k1) in lut4 */
    const float *level_list;
    const int *lut4;
    int W, b, bucket_bits, align;
} kernel;

TARGET INLINE void kernel_init(kernel *k, const pvq_codec *c)
{
    const pvq_fast8 *f = c->fast;
    k->cum = table_load(f->cum, f->ntab);
    k->n2 = table_load(f->n2, f->ntab);
    k->inv = table_load(f->inv_n2, f->ntab);
    k->levels = table_load(c->levels, 1 << c->gain_bits < 16 ? 16 : 1 << c->gain_bits);
    k->level_list = c->levels;
    k->base_lo = table_load(f->base_lo, f->ntab);
    k->base_hi = table_load(f->base_hi, f->ntab);
    k->lut4 = (const int *)f->lut4;
    k->perm = _mm512_loadu_si512(f->field_perm);
    k->shift = _mm512_loadu_si512(f->field_shift);
    k->field_mask = _mm512_set1_epi64((long long)((UINT64_C(1) << c->field_bits) - 1));
    k->perm32 = _mm512_loadu_si512(f->field_perm32);
    k->shift32 = _mm512_loadu_si512(f->field_shift32);
    k->field_mask32 = _mm512_set1_epi32((int)((UINT64_C(1) << (c->field_bits & 31)) - 1 +
                                              (c->field_bits == 32 ? UINT64_C(0xFFFFFFFF) : 0)));
    k->code_mask = _mm512_set1_epi32((1 << c->gain_bits) - 1);
    k->k_pair = table_load(f->k_pair, 32);
    k->bucket_a = _mm512_loadu_si512(f->class_of_bucket);
    k->bucket_b = _mm512_loadu_si512(f->class_of_bucket + 64);
    k->bucket_c = _mm512_loadu_si512(f->class_of_bucket + 128);
    k->bucket_d = _mm512_loadu_si512(f->class_of_bucket + 192);
    k->c3_a = _mm512_loadu_si512(f->c3_of_key);
    k->c3_b = _mm512_loadu_si512(f->c3_of_key + 64);
    k->c3_c = _mm512_loadu_si512(f->c3_of_key + 128);
    k->c3_d = _mm512_loadu_si512(f->c3_of_key + 192);
    k->c2_a = _mm512_loadu_si512(f->c2_of_key);
    k->c2_b = _mm512_loadu_si512(f->c2_of_key + 64);
    k->binom3_next = _mm512_loadu_si512(f->binom3_next);
    k->binom3 = _mm512_loadu_si512(f->binom3);
    k->binom2_next = _mm512_loadu_si512(f->binom2_next);
    k->binom2 = _mm512_loadu_si512(f->binom2);
    k->pair_sel = _mm512_loadu_si512(f->pair_sel);
    k->lo_sel = _mm512_loadu_si512(f->lo_sel);
    k->hi_sel = _mm512_loadu_si512(f->hi_sel);
    k->W = c->field_bits;
    k->b = c->gain_bits;
    k->bucket_bits = f->bucket_bits;
    k->align = c->class_align;
}

/* Mask of the first nb bytes (nb clamped to [0, 64]). */
INLINE __mmask64 first_bytes(int64_t nb)
{
    return nb >= 64 ? ~UINT64_C(0) : nb <= 0 ? 0 : (UINT64_C(1) << nb) - 1;
}

/* The `need` bytes at p, of which nb exist before the row's end (missing ones read as zero): a plain load
 * where the row goes on for 64 bytes (the callers ignore the extra bytes), a masked load only at the row's
 * end, which reads no further than it must. */
TARGET INLINE __m512i load_bytes(const uint8_t *p, int64_t need, int64_t nb)
{
    if (nb >= 64) return _mm512_loadu_si512(p);
    if (nb <= 0) return _mm512_setzero_si512();
    return _mm512_maskz_loadu_epi8(first_bytes(nb < need ? nb : need), p);
}

/* The eight fields of the chunk at p (nb bytes exist from p; bytes past the chunk are ignored) as
 * 64-bit lanes. */
TARGET INLINE __m512i fields8(const kernel *k, const uint8_t *p, int64_t nb)
{
    __m512i bytes = load_bytes(p, k->W, nb);
    __m512i v = _mm512_permutexvar_epi8(k->perm, bytes);
    return _mm512_and_si512(_mm512_srlv_epi64(v, k->shift), k->field_mask);
}

/* Index and gain code of the sixteen groups at p (nb bytes exist from p to the row's end: a row's
 * last step reads only its own bytes, and missing fields read as zeros, a valid index).  p2: where groups
 * 8-15 are when they are not the W bytes after p (two rows' last chunks in one step), else NULL. */
TARGET INLINE void fields16(const kernel *k, const uint8_t *p, const uint8_t *p2, int64_t nb, int narrow, __m512i *idx,
                            __m512i *code)
{
    if (narrow) {
        __m512i bytes = p2 ? _mm512_or_si512(_mm512_maskz_loadu_epi8(first_bytes(k->W), p),
                                             _mm512_maskz_loadu_epi8(first_bytes(2 * k->W) & ~first_bytes(k->W), p2 - k->W))
                           : load_bytes(p, 2 * k->W, nb);
        __m512i f = _mm512_and_si512(_mm512_srlv_epi32(_mm512_permutexvar_epi8(k->perm32, bytes), k->shift32),
                                     k->field_mask32);
        *idx = _mm512_srli_epi32(f, k->b);
        *code = _mm512_and_si512(f, k->code_mask);
        return;
    }
    /* the low dwords of both chunks' qwords in one permute (narrowing each chunk costs two uops, then an insert) */
    const __m512i low_dwords = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    __m512i f0 = fields8(k, p, p2 ? k->W : nb), f1 = p2 ? fields8(k, p2, k->W) : fields8(k, p + k->W, nb - k->W);
    *idx = _mm512_permutex2var_epi32(_mm512_srli_epi64(f0, k->b), low_dwords, _mm512_srli_epi64(f1, k->b));
    *code = _mm512_and_si512(_mm512_permutex2var_epi32(f0, low_dwords, f1), k->code_mask);
}

/* Each statement so marked runs for the U (1 or 2) steps side by side. */
#define EACH _Pragma("GCC unroll 2") for (int u = 0; u < U; u++)

/* The points of U steps of sixteen groups from their classes and halves' indices (k1, hA, hB; dword lanes),
 * as int8 x 4 per lane (lo: coordinates 0-3, hi: 4-7).  The halves work in 32 word lanes (2g + h: half h of
 * group g), their pairs in 64 byte lanes (pair j of group g in byte 4g + j).  small: K <= 14 (ntab 16). */
TARGET INLINE void halves16(const kernel *k, int U, const __m512i *k1, const __m512i *hA, const __m512i *hB, int small,
                            __m512i *lo, __m512i *hi)
{
    const __m512i zero = _mm512_setzero_si512(), one = _mm512_set1_epi16(1), low_byte = _mm512_set1_epi16(0xFF);
    __m512i kw[2], hw[2], k8[2], u8[2], s[2], c3[2], s2[2], c2[2], c1[2], e[2], nP[2], tP[2], tQ[2], qP[2];
    __mmask32 edge[2], side[2];
    EACH kw[u] = lookup(&k->k_pair, k1[u], 32);                                   /* pulses of the halves */
    EACH hw[u] = _mm512_or_si512(hA[u], _mm512_slli_epi32(hB[u], 16));           /* their indices */
    /* edges (one pair empty) below 8k; a half of no pulses is one too */
    EACH k8[u] = _mm512_slli_epi16(kw[u], 3);
    EACH edge[u] = _mm512_cmplt_epu16_mask(hw[u], _mm512_max_epu16(k8[u], one));
    EACH u8[u] = _mm512_sub_epi16(hw[u], k8[u]);
    EACH s[u] = _mm512_srli_epi16(u8[u], 4);                                      /* the colex rank */
    /* c3 - 2: the key's entry or one more (entry 0 is 0, so the high byte of a word stays clear) */
    if (small) {
        EACH c3[u] = _mm512_permutex2var_epi8(k->c3_a, _mm512_min_epu16(s[u], _mm512_add_epi16(_mm512_srli_epi16(s[u], 4),
                                                                                            _mm512_set1_epi16(60))), k->c3_b);
    } else {
        EACH {
            __m512i key = _mm512_min_epu16(s[u], _mm512_add_epi16(_mm512_srli_epi16(s[u], 5), _mm512_set1_epi16(124)));
            c3[u] = _mm512_and_si512(_mm512_mask_blend_epi8(_mm512_movepi8_mask(key),
                                                            _mm512_permutex2var_epi8(k->c3_a, key, k->c3_b),
                                                            _mm512_permutex2var_epi8(k->c3_c, key, k->c3_d)), low_byte);
        }
    }
    EACH c3[u] = _mm512_mask_add_epi16(c3[u], _mm512_cmpge_epu16_mask(s[u], _mm512_permutexvar_epi16(c3[u], k->binom3_next)),
                                       c3[u], one);
    EACH s2[u] = _mm512_sub_epi16(s[u], _mm512_permutexvar_epi16(c3[u], k->binom3));
    if (small) {                                /* s2 < C(14, 2) = 91: the 2-subset in one byte */
        EACH {
            __m512i both = _mm512_and_si512(_mm512_permutex2var_epi8(k->c2_a, s2[u], k->c2_b), low_byte);
            c2[u] = _mm512_srli_epi16(both, 4);
            c1[u] = _mm512_and_si512(both, _mm512_set1_epi16(15));
        }
    } else {
        EACH {
            __m512i key = _mm512_min_epu16(s2[u], _mm512_add_epi16(_mm512_srli_epi16(s2[u], 3), _mm512_set1_epi16(28)));
            c2[u] = _mm512_and_si512(_mm512_permutex2var_epi8(k->c2_a, key, k->c2_b), low_byte);
            c2[u] = _mm512_mask_add_epi16(c2[u], _mm512_cmpge_epu16_mask(s2[u], _mm512_permutexvar_epi16(c2[u], k->binom2_next)),
                                          c2[u], one);
            c1[u] = _mm512_sub_epi16(s2[u], _mm512_permutexvar_epi16(c2[u], k->binom2));
        }
    }
    /* the pairs' pulses, offsets and quarters: (c2, c1, (u >> 2) & 3) and (k - c2, c3 - c2 - 1, u & 3); an edge
     * e = h >> 2 < k is (0, pair(k, e, q)), else (pair(k, e - k, q), 0) with q = h & 3 (= u & 3) */
    EACH e[u] = _mm512_srli_epi16(hw[u], 2);
    EACH side[u] = _mm512_cmpge_epu16_mask(e[u], kw[u]);
    EACH nP[u] = _mm512_mask_mov_epi16(c2[u], edge[u], _mm512_maskz_mov_epi16(side[u], kw[u]));
    EACH tP[u] = _mm512_mask_mov_epi16(c1[u], edge[u], _mm512_maskz_sub_epi16(side[u], e[u], kw[u]));
    EACH tQ[u] = _mm512_mask_mov_epi16(_mm512_add_epi16(_mm512_sub_epi16(c3[u], c2[u]), one), edge[u],
                                       _mm512_maskz_mov_epi16(~side[u], e[u]));
    EACH qP[u] = _mm512_mask_mov_epi16(_mm512_srli_epi16(u8[u], 2), edge[u], hw[u]);
    /* the pairs rot^q (t, n - t) in byte lanes (only the two low bits of q count), signed, laid out */
    EACH {
        __m512i n = _mm512_permutex2var_epi8(nP[u], k->pair_sel, _mm512_sub_epi16(kw[u], nP[u]));
        __m512i t = _mm512_permutex2var_epi8(tP[u], k->pair_sel, tQ[u]);
        __m512i q = _mm512_permutex2var_epi8(qP[u], k->pair_sel, hw[u]);
        __m512i z = _mm512_sub_epi8(n, t);
        __mmask64 odd = _mm512_test_epi8_mask(q, _mm512_set1_epi8(1));
        __mmask64 neg1 = _mm512_test_epi8_mask(_mm512_add_epi8(q, _mm512_set1_epi8(1)), _mm512_set1_epi8(2));
        __mmask64 neg2 = _mm512_test_epi8_mask(q, _mm512_set1_epi8(2));
        __m512i first = _mm512_mask_blend_epi8(odd, t, z), second = _mm512_mask_blend_epi8(odd, z, t);
        first = _mm512_mask_sub_epi8(first, neg1, zero, first);
        second = _mm512_mask_sub_epi8(second, neg2, zero, second);
        lo[u] = _mm512_permutex2var_epi8(first, k->lo_sel, second);
        hi[u] = _mm512_permutex2var_epi8(first, k->hi_sel, second);
    }
}

/* The same points from lut4, one gather per half (gather: pvq_fast8.gather_halves), else halves16. */
TARGET INLINE void halves(const kernel *k, int U, const __m512i *k1, const __m512i *hA, const __m512i *hB, int ntab,
                          int gather, __m512i *lo, __m512i *hi)
{
    if (!gather) {
        halves16(k, U, k1, hA, hB, ntab == 16, lo, hi);
        return;
    }
    EACH {
        lo[u] = _mm512_i32gather_epi32(_mm512_add_epi32(lookup(&k->base_lo, k1[u], ntab), hA[u]), k->lut4, 4);
        hi[u] = _mm512_i32gather_epi32(_mm512_add_epi32(lookup(&k->base_hi, k1[u], ntab), hB[u]), k->lut4, 4);
    }
}

/* The split of sixteen groups' indices at p: the class k1 (pulses of the first half), the halves' indices
 * (q, rem: the quotient and remainder by N(4, K - k1)), and the gain codes. */
TARGET INLINE void split16(const kernel *k, const uint8_t *p, const uint8_t *p2, int64_t nb, int ntab, int narrow,
                           int exact_div, __m512i *k1_out, __m512i *q_out, __m512i *rem_out, __m512i *code)
{
    __m512i idx, k1;
    fields16(k, p, p2, nb, narrow, &idx, code);
    if (k->bucket_bits) {           /* aligned classes: the top bits name the class (bytes 1-3 look up class 0) */
        __m512i bucket = _mm512_srli_epi32(idx, k->align);
        k1 = _mm512_permutex2var_epi8(k->bucket_a, bucket, k->bucket_b);
        if (k->bucket_bits == 8)
            k1 = _mm512_mask_blend_epi8(_mm512_movepi8_mask(bucket), k1,
                                        _mm512_permutex2var_epi8(k->bucket_c, bucket, k->bucket_d));
    } else {                        /* dense: the largest j with cum[j] <= idx (entries past K exceed every index) */
        k1 = _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int step = ntab / 2; step; step /= 2) {
            __m512i cand = _mm512_add_epi32(k1, _mm512_set1_epi32(step));
            __mmask16 ok = _mm512_cmple_epi32_mask(lookup(&k->cum, cand, ntab), idx);
            k1 = _mm512_mask_mov_epi32(k1, ok, cand);
        }
    }
    __m512i r = _mm512_sub_epi32(idx, lookup(&k->cum, k1, ntab));
    __m512i n2 = lookup(&k->n2, k1, ntab);
    __m512 inv = _mm512_castsi512_ps(lookup(&k->inv, k1, ntab));
    __m512i q, rem;
    if (exact_div) {
        q = _mm512_cvttps_epi32(_mm512_fmadd_ps(_mm512_cvtepi32_ps(r), inv, _mm512_mul_ps(inv, _mm512_set1_ps(0.5f))));
        rem = _mm512_sub_epi32(r, _mm512_mullo_epi32(q, n2));
    } else {
        q = _mm512_cvttps_epi32(_mm512_mul_ps(_mm512_cvtepi32_ps(r), inv));
        rem = _mm512_sub_epi32(r, _mm512_mullo_epi32(q, n2));
        __mmask16 neg = _mm512_cmplt_epi32_mask(rem, _mm512_setzero_si512());
        q = _mm512_mask_sub_epi32(q, neg, q, _mm512_set1_epi32(1));
        rem = _mm512_mask_add_epi32(rem, neg, rem, n2);
        __mmask16 over = _mm512_cmpge_epi32_mask(rem, n2);
        q = _mm512_mask_add_epi32(q, over, q, _mm512_set1_epi32(1));
        rem = _mm512_mask_sub_epi32(rem, over, rem, n2);
    }
    *k1_out = k1;
    *q_out = q;
    *rem_out = rem;
}

/* The weight scales s of sixteen groups from their points' absolute values, gain codes and rows' scales. */
TARGET INLINE __m512 scales16(const kernel *k, __m512i alo, __m512i ahi, __m512i code, __m512 scale, int nlev, int exact)
{
    __m512i sq = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), alo, alo), ahi, ahi);
    __m512 level = nlev <= 32 ? _mm512_castsi512_ps(lookup(&k->levels, code, nlev))
                              : _mm512_i32gather_ps(code, k->level_list, 4);     /* b >= 6: not a preset */
    __m512 gain = _mm512_mul_ps(scale, level);
    __m512 qf = _mm512_cvtepi32_ps(sq);
    if (exact)                       /* the format's rounding: gain / sqrtf(q) */
        return _mm512_div_ps(gain, _mm512_sqrt_ps(qf));
    /* dots: 1/sqrt(q) to ~1 ulp by rsqrt14 and one Newton step */
    __m512 r = _mm512_rsqrt14_ps(qf);
    __m512 hqr = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), qf), r);
    r = _mm512_mul_ps(r, _mm512_fnmadd_ps(hqr, r, _mm512_set1_ps(1.5f)));
    return _mm512_mul_ps(gain, r);
}

/* U (1 or 2) steps of sixteen groups, the u-th at p + 2 W u: halves lo/hi (int8 x 4 per lane), their absolute
 * values, weight scales s.  Two steps decode side by side, so that the core has two independent chains. */
TARGET INLINE void decode16(const kernel *k, int U, const uint8_t *p, int64_t nb, float scale, int ntab, int nlev,
                            int narrow, int exact_div, int gather, int exact, __m512i *lo, __m512i *hi, __m512i *alo,
                            __m512i *ahi, __m512 *s)
{
    __m512i k1[2], q[2], rem[2], code[2];
    EACH split16(k, p + 2 * k->W * u, NULL, nb - 2 * k->W * u, ntab, narrow, exact_div, &k1[u], &q[u], &rem[u], &code[u]);
    halves(k, U, k1, q, rem, ntab, gather, lo, hi);
    EACH {
        alo[u] = _mm512_abs_epi8(lo[u]);                              /* |y| <= 127 */
        ahi[u] = _mm512_abs_epi8(hi[u]);
        s[u] = scales16(k, alo[u], ahi[u], code[u], _mm512_set1_ps(scale), nlev, exact);
    }
}

/* Weights of groups 2t, 2t+1 of a step (t < 8) as sixteen floats in row order. */
TARGET INLINE __m512 pair_weights(__m512i lo, __m512i hi, __m512 s, int t)
{
    /* unpacklo: 128-bit lane l holds groups 4l, 4l+1; unpackhi: 4l+2, 4l+3 (int8 x 8 each). */
    __m512i u = (t & 1) ? _mm512_unpackhi_epi32(lo, hi) : _mm512_unpacklo_epi32(lo, hi);
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

/* x with the sign of y applied (x where y >= 0, -x where y < 0); x in [-127, 127]. */
TARGET INLINE __m512i sign_of(__m512i x, __m512i y)
{
    return _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(y), _mm512_setzero_si512(), x);
}

enum op { DEQUANTIZE, DOT, DOT_Q8 };

/* Lanes 8-15 (AVX512F only: no AVX512DQ extract). */
TARGET INLINE __m256 upper8(__m512 v)
{
    return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}

/* As pvq_sum_lanes8. */
TARGET INLINE float sum_lanes8(__m256 acc)
{
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

/* One step of ng <= 16 groups whose fields start at p, avail bytes before the row's end (DOT_Q8: ng is 8 or
 * 16, into acc8, or U = 2 steps of 16; the others into acc0, acc1). */
TARGET INLINE void step(const kernel *k, int U, const uint8_t *p, int64_t avail, int64_t g0, int64_t ng, float scale,
                        const float *x, const int8_t *xq, const float *xs, float *out,
                        int ntab, int nlev, int narrow, int exact_div, int gather, enum op op, __m512 *acc0, __m512 *acc1,
                        __m256 *acc8)
{
    __m512i lo[2], hi[2], alo[2], ahi[2];
    __m512 s[2];
    decode16(k, U, p, avail, scale, ntab, nlev, narrow, exact_div, gather, op != DOT, lo, hi, alo, ahi, s);
    if (op == DOT_Q8) {
        EACH {
            const int8_t *xp = xq + (g0 + 16 * u) * 8;
            /* y . x = |y| . (sign(y) x): vpdpbusd multiplies unsigned by signed bytes. */
            __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), alo[u], sign_of(_mm512_loadu_si512(xp), lo[u]));
            d = _mm512_dpbusd_epi32(d, ahi[u], sign_of(_mm512_loadu_si512(xp + 64), hi[u]));
            /* the reference's order (pvq_codec.h): the step's two chunks of 8 into the same 8 lanes, in turn */
            __m512 df = _mm512_cvtepi32_ps(d), m = _mm512_mul_ps(s[u], _mm512_set1_ps(xs[g0 / 16 + u]));
            *acc8 = _mm256_fmadd_ps(_mm512_castps512_ps256(df), _mm512_castps512_ps256(m), *acc8);
            if (U == 2 || ng > 8)
                *acc8 = _mm256_fmadd_ps(upper8(df), upper8(m), *acc8);
        }
        return;
    }
    if (ng < 16) s[0] = _mm512_maskz_mov_ps((__mmask16)((1u << ng) - 1), s[0]);   /* padding adds nothing */
#pragma GCC unroll 8
    for (int t = 0; t < 8; t++) {
        if (2 * t >= ng) break;
        const __mmask16 m = 2 * t + 1 < ng ? 0xFFFF : 0x00FF;
        __m512 w = pair_weights(lo[0], hi[0], s[0], t);
        if (op == DEQUANTIZE)
            _mm512_mask_storeu_ps(out + (g0 + 2 * t) * 8, m, w);
        else if (t & 1)
            *acc1 = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(m, x + (g0 + 2 * t) * 8), *acc1);
        else
            *acc0 = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(m, x + (g0 + 2 * t) * 8), *acc0);
    }
}

/* Groups [0, end) of a row of G into acc (integer dot, the reference's order): steps of 16, two side by side. */
TARGET INLINE void chunks_q8(const kernel *k, const uint8_t *row, int64_t G, int64_t end, float sc, const int8_t *xq,
                             const float *xs, int ntab, int nlev, int narrow, int exact_div, int gather, __m256 *acc)
{
    int64_t g0 = 0;
    for (; g0 + 32 <= end; g0 += 32) {
        prefetch_ahead(row + g0 / 8 * k->W, 4 * k->W);       /* the 4 W bytes of this iteration */
        step(k, 2, row + g0 / 8 * k->W, (G - g0) * k->W / 8, g0, 16, sc, NULL, xq, xs, NULL, ntab, nlev, narrow, exact_div,
             gather, DOT_Q8, NULL, NULL, acc);
    }
    for (; g0 < end; g0 += 16)
        step(k, 1, row + g0 / 8 * k->W, (G - g0) * k->W / 8, g0, end - g0 < 16 ? 8 : 16, sc, NULL, xq, xs, NULL, ntab,
             nlev, narrow, exact_div, gather, DOT_Q8, NULL, NULL, acc);
}

/* The last chunks of 8 groups of two rows, at pa and pb (their row scales sa, sb), as one step: lanes 0-7 the
 * first row's, 8-15 the second's, each meeting the same 8 groups of activations (step xp, scale xs) and added
 * to its row's lanes as its last chunk, in the reference's order. */
TARGET INLINE void tail_pair_q8(const kernel *k, const uint8_t *pa, const uint8_t *pb, float sa, float sb,
                                const int8_t *xp, float xs, int ntab, int nlev, int narrow, int exact_div, int gather,
                                __m256 *acc_a, __m256 *acc_b)
{
    __m512i k1, q, rem, code, lo, hi;
    split16(k, pa, pb, k->W, ntab, narrow, exact_div, &k1, &q, &rem, &code);
    halves(k, 1, &k1, &q, &rem, ntab, gather, &lo, &hi);
    __m512i alo = _mm512_abs_epi8(lo), ahi = _mm512_abs_epi8(hi);
    __m512 s = scales16(k, alo, ahi, code, _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(sa), _mm512_set1_ps(sb)), nlev, 1);
    __m512i xlo = _mm512_loadu_si512(xp), xhi = _mm512_loadu_si512(xp + 64);
    xlo = _mm512_shuffle_i64x2(xlo, xlo, 0x44), xhi = _mm512_shuffle_i64x2(xhi, xhi, 0x44);  /* groups 0-7 twice */
    __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), alo, sign_of(xlo, lo));
    d = _mm512_dpbusd_epi32(d, ahi, sign_of(xhi, hi));
    __m512 df = _mm512_cvtepi32_ps(d), m = _mm512_mul_ps(s, _mm512_set1_ps(xs));
    *acc_a = _mm256_fmadd_ps(_mm512_castps512_ps256(df), _mm512_castps512_ps256(m), *acc_a);
    *acc_b = _mm256_fmadd_ps(upper8(df), upper8(m), *acc_b);
}

/* Rows of a matrix (row r at data + r * row_bytes, its scale scales_f16[r], or `scale` for a single
 * row when scales_f16 is NULL); ntab, nlev, narrow, exact_div, gather and op are constants after inlining.
 * Results: y[r] for dots, out + r * n for dequantize.  Two steps per iteration give the core two
 * independent dependency chains; the last step of a row whose group count is not a multiple of 16
 * loads only its bytes and masks what it writes or reads. */
TARGET INLINE void rows_kernel(const pvq_codec *c, const uint8_t *data, size_t row_bytes, int64_t nrows,
                               const uint16_t *scales_f16, float scale, int64_t n, const float *x,
                               const int8_t *xq, const float *xs, float *out, float *y,
                               int ntab, int nlev, int narrow, int exact_div, int gather, enum op op)
{
    kernel k;
    kernel_init(&k, c);
    const int64_t G = n / 8;
    for (int64_t r = 0; r < nrows; r++) {
        const uint8_t *row = data + (size_t)r * row_bytes;
        const float sc = scales_f16 ? _cvtsh_ss(scales_f16[r]) : scale;
        float *o = op == DEQUANTIZE ? out + r * n : NULL;
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
        __m256 acc8 = _mm256_setzero_ps();
        if (op == DOT_Q8) { /* whole chunks of 8 in steps, the rest as the reference adds it */
            const int64_t whole = G / 8 * 8;
            if (whole % 16 == 8 && r + 1 < nrows) {
                /* an odd number of chunks: two rows' last chunks make one step instead of two half-empty ones */
                const uint8_t *row2 = row + row_bytes;
                const float sc2 = _cvtsh_ss(scales_f16[r + 1]);
                const int64_t end = whole - 8;
                __m256 acc2 = _mm256_setzero_ps();
                chunks_q8(&k, row, G, end, sc, xq, xs, ntab, nlev, narrow, exact_div, gather, &acc8);
                chunks_q8(&k, row2, G, end, sc2, xq, xs, ntab, nlev, narrow, exact_div, gather, &acc2);
                tail_pair_q8(&k, row + end / 8 * k.W, row2 + end / 8 * k.W, sc, sc2, xq + 8 * end, xs[end / 16], ntab,
                             nlev, narrow, exact_div, gather, &acc8, &acc2);
                y[r] = sum_lanes8(acc8);
                y[r + 1] = sum_lanes8(acc2);
                if (__builtin_expect(whole < G, 0)) {
                    y[r] += pvq_dot_groups_q8_ref(c, row, whole, G, sc, xq, xs);
                    y[r + 1] += pvq_dot_groups_q8_ref(c, row2, whole, G, sc2, xq, xs);
                }
                r++;
                continue;
            }
            chunks_q8(&k, row, G, whole, sc, xq, xs, ntab, nlev, narrow, exact_div, gather, &acc8);
            y[r] = sum_lanes8(acc8);
            if (__builtin_expect(whole < G, 0))   /* a call in the loop would spill every table register each row */
                y[r] += pvq_dot_groups_q8_ref(c, row, whole, G, sc, xq, xs);
            continue;
        }
        int64_t g0 = 0;
        for (; g0 + 32 <= G; g0 += 32) {
            step(&k, 1, row + g0 / 8 * k.W, (G - g0) * k.W / 8, g0, 16, sc, x, xq, xs, o, ntab, nlev, narrow, exact_div,
                 gather, op, &acc0, &acc1, NULL);
            step(&k, 1, row + (g0 + 16) / 8 * k.W, (G - g0 - 16) * k.W / 8, g0 + 16, 16, sc, x, xq, xs, o, ntab, nlev, narrow,
                 exact_div, gather, op, &acc1, &acc0, NULL);
        }
        for (; g0 + 16 <= G; g0 += 16)
            step(&k, 1, row + g0 / 8 * k.W, (G - g0) * k.W / 8, g0, 16, sc, x, xq, xs, o, ntab, nlev, narrow, exact_div,
                 gather, op, &acc0, &acc1, NULL);
        if (g0 < G)
            step(&k, 1, row + g0 / 8 * k.W, (G - g0) * k.W / 8, g0, G - g0, sc, x, xq, xs, o, ntab, nlev, narrow, exact_div,
                 gather, op, &acc0, &acc1, NULL);
        if (op != DEQUANTIZE) y[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    }
}

/* One specialization per common layout class (tables of 16 or 32 entries in registers, larger
 * ones gathered; narrow or wide fields; division with or without correction). */
TARGET static void rows_any(const pvq_codec *c, const uint8_t *data, size_t row_bytes, int64_t nrows,
                            const uint16_t *scales_f16, float scale, int64_t n, const float *x,
                            const int8_t *xq, const float *xs, float *out, float *y, enum op op)
{
#define ROWS(NTAB, NLEV, NARROW, EXACT, GATHER)                                                              \
    do {                                                                                                     \
        if (op == DEQUANTIZE)                                                                                \
            rows_kernel(c, data, row_bytes, nrows, scales_f16, scale, n, x, xq, xs, out, y, NTAB, NLEV,      \
                        NARROW, EXACT, GATHER, DEQUANTIZE);                                                  \
        else if (op == DOT)                                                                                  \
            rows_kernel(c, data, row_bytes, nrows, scales_f16, scale, n, x, xq, xs, out, y, NTAB, NLEV,      \
                        NARROW, EXACT, GATHER, DOT);                                                         \
        else                                                                                                 \
            rows_kernel(c, data, row_bytes, nrows, scales_f16, scale, n, x, xq, xs, out, y, NTAB, NLEV,      \
                        NARROW, EXACT, GATHER, DOT_Q8);                                                      \
        return;                                                                                              \
    } while (0)
    const pvq_fast8 *f = c->fast;
    int ntab = f->ntab, nlev = 1 << c->gain_bits;
    /* the gathered halves only in the class of the presets up to K = 14 (lut4 <= 128 KB has K <= 14) */
    if (ntab == 16 && nlev <= 16 && f->narrow && f->exact_div && f->gather_halves) ROWS(16, 16, 1, 1, 1);
    if (ntab == 16 && nlev <= 16 && f->narrow && f->exact_div) ROWS(16, 16, 1, 1, 0);
    if (ntab == 16 && nlev <= 16 && f->narrow) ROWS(16, 16, 1, 0, 0);
    if (ntab == 32 && nlev <= 16 && f->narrow) ROWS(32, 16, 1, 0, 0);
    if (ntab == 32 && nlev <= 16) ROWS(32, 16, 0, 0, 0);
    if (ntab == 16 && nlev <= 32) ROWS(16, 32, 0, 0, 0);
    if (ntab == 32 && nlev <= 32) ROWS(32, 32, 0, 0, 0);
    if (ntab == 16) ROWS(16, 256, 0, 0, 0);
    ROWS(32, 256, 0, 0, 0);
#undef ROWS
}

void pvq_dequantize_row_avx512(const pvq_codec *c, const uint8_t *row, float scale, int64_t n, float *out)
{
    if (!pvq_closed_form(c)) pvq_dequantize_row_scalar(c, row, scale, n, out);
    else rows_any(c, row, 0, 1, NULL, scale, n, NULL, NULL, NULL, out, NULL, DEQUANTIZE);
}

float pvq_dot_row_avx512(const pvq_codec *c, const uint8_t *row, float scale, int64_t n, const float *x)
{
    float y;
    if (!pvq_closed_form(c)) return pvq_dot_row_scalar(c, row, scale, n, x);
    rows_any(c, row, 0, 1, NULL, scale, n, x, NULL, NULL, NULL, &y, DOT);
    return y;
}

float pvq_dot_row_q8_avx512(const pvq_codec *c, const uint8_t *row, float scale, int64_t n,
                            const int8_t *xq, const float *xs)
{
    float y;
    if (!pvq_closed_form(c)) return pvq_dot_row_q8_scalar(c, row, scale, n, xq, xs);
    rows_any(c, row, 0, 1, NULL, scale, n, NULL, xq, xs, NULL, &y, DOT_Q8);
    return y;
}

void pvq_matvec_q8_avx512(const pvq_codec *c, const uint8_t *data, const uint16_t *scales_f16, int64_t rows,
                          int64_t n, const int8_t *xq, const float *xs, float *y)
{
    if (!pvq_closed_form(c)) pvq_matvec_q8_scalar(c, data, scales_f16, rows, n, xq, xs, y);
    else rows_any(c, data, pvq_row_bytes(c, n), rows, scales_f16, 0.0f, n, NULL, xq, xs, NULL, y, DOT_Q8);
}
