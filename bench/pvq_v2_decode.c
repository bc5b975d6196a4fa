/* A candidate enumeration of P(8, K) for a version 2 of the PVQ format, and its AVX-512 decoder, measured
 * against the version 1 kernel in the same run (docs/benchmarks.md, "A version 2 enumeration").  A design
 * prototype: the runtime and the converter still read and write version 1 only.
 *
 * The enumeration ("quadrant halves"):
 *   pair(n, t, q)  = rot^q (t, n - t), rot(x, y) = (-y, x), 0 <= t < n, q < 4: the 4n points of P(2, n) as
 *                    four quarter-arcs, so a pair's sign bits are its two low bits and nothing is searched.
 *   half(k, h)     (4 coordinates: pairs P = y0 y1 and Q = y2 y3, N4(k) = 8k + 16 C(k+1, 3) points, k >= 1)
 *                    h < 8k, "edge" (one pair empty): e = h >> 2, q = h & 3;
 *                         e < k: P = 0, Q = pair(k, e, q);  e >= k: P = pair(k, e - k, q), Q = 0
 *                    else u = h - 8k, s = u >> 4: (c1 < c2 < c3) = the 3-subset of colex rank s
 *                         (s = C(c3, 3) + C(c2, 2) + c1), m = c2:
 *                         P = pair(m, c1, (u >> 2) & 3), Q = pair(k - m, c3 - c2 - 1, u & 3)
 *                    The colex rank does not depend on k, so the "split of the half" is two lookups in
 *                    universal tables of C(c, 3) and C(c, 2) instead of a search over k-dependent counts.
 *   group(idx)     classes k1 = 0..K (pulses of the first half), class k1 holding S(k1) = N4(k1) N4(K - k1)
 *                    points, padded to at least 2^(B - 7) codes when every padded class still fits the B-bit
 *                    index (then a 128-entry table of idx >> (B - 7) gives k1 up to one correction); inside
 *                    the class, r = hA N4(K - k1) + hB.  Padding codes are invalid indices (a reader rejects
 *                    them as it rejects idx >= N today).  It uses 1.025 (K = 14), 1.061 (K = 29) of N(8, K)
 *                    codes, inside the 1.366 and 1.186 the fields have: the rate is unchanged.
 *
 * usage: pvq_v2_decode check                  exhaustive bijection for K = 1..10, code space of the presets
 *        pvq_v2_decode points K B < indices   the points of indices (one per line), for the Python reference
 *        pvq_v2_decode bench K b n rows reps  v2 AVX-512 integer dot against v1's, random valid rows, 1 thread
 * Build: cc -O2 -Iruntime/src/kernels -Iruntime/src bench/pvq_v2_decode.c runtime/src/kernels/pvq_*.c
 *        runtime/src/kernels/isa.c -lm */
#define _POSIX_C_SOURCE 199309L
#include "pvq_codec.h"

#include <immintrin.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- the enumeration, scalar reference ---- */

static uint64_t binom(int n, int k)
{
    if (k < 0 || n < k) return 0;
    uint64_t r = 1;
    for (int i = 1; i <= k; i++) r = r * (uint64_t)(n - k + i) / (uint64_t)i;
    return r;
}

static uint64_t n4(int k) { return k == 0 ? 1 : 8 * (uint64_t)k + 16 * binom(k + 1, 3); }

typedef struct {
    int K, B, pad_shift;          /* classes padded to >= 2^pad_shift codes (0: dense) */
    uint64_t size[64], base[65];  /* class k1: points, first code */
} enum2;

static void enum2_init(enum2 *t, int K, int B)
{
    t->K = K, t->B = B;
    uint64_t w = (uint64_t)1 << (B - 7), total = 0;
    for (int k = 0; k <= K; k++) {
        t->size[k] = n4(k) * n4(K - k);
        total += t->size[k] > w ? t->size[k] : w;
    }
    t->pad_shift = total <= (uint64_t)1 << B ? B - 7 : 0;
    uint64_t p = (uint64_t)1 << t->pad_shift;
    t->base[0] = 0;
    for (int k = 0; k <= K; k++) t->base[k + 1] = t->base[k] + (t->size[k] > p ? t->size[k] : p);
}

static void pair(int n, int t, int q, int *y)
{
    int a = t, b = n - t;
    for (int i = 0; i < q; i++) { int r = -b; b = a; a = r; }
    y[0] = a, y[1] = b;
}

static void half(int k, uint64_t h, int *y)
{
    if (k == 0) { y[0] = y[1] = y[2] = y[3] = 0; return; }
    if (h < 8 * (uint64_t)k) {
        int e = (int)(h >> 2), q = (int)(h & 3);
        if (e < k) y[0] = y[1] = 0, pair(k, e, q, y + 2);
        else pair(k, e - k, q, y), y[2] = y[3] = 0;
        return;
    }
    uint64_t u = h - 8 * (uint64_t)k, s = u >> 4;
    int c3 = 2, c2 = 1;
    while (binom(c3 + 1, 3) <= s) c3++;
    s -= binom(c3, 3);
    while (binom(c2 + 1, 2) <= s) c2++;
    s -= binom(c2, 2);
    pair(c2, (int)s, (int)(u >> 2) & 3, y);
    pair(k - c2, c3 - c2 - 1, (int)(u & 3), y + 2);
}

/* The point of idx; -1 for a padding code (an invalid index). */
static int enum2_point(const enum2 *t, uint64_t idx, int *y)
{
    if (idx >= t->base[t->K + 1]) return -1;
    int k1 = 0;
    while (t->base[k1 + 1] <= idx) k1++;
    uint64_t r = idx - t->base[k1], n2 = n4(t->K - k1);
    if (r >= t->size[k1]) return -1;
    half(k1, r / n2, y);
    half(t->K - k1, r % n2, y + 4);
    return 0;
}

/* N(d, k) for d <= 8, k < 64 */
static uint64_t pyramid(int d, int k)
{
    uint64_t n[9][64];
    for (int i = 0; i <= d; i++)
        for (int j = 0; j <= k; j++)
            n[i][j] = j == 0 ? 1 : i == 0 ? 0 : n[i - 1][j] + n[i][j - 1] + n[i - 1][j - 1];
    return n[d][k];
}
/* Whether the sixteen fields of a step need qword extraction: a field and its bit offset exceed a dword. */
static int wide_fields(int W)
{
    for (int j = 0; j < 16; j++)
        if (j * W % 8 + W > 32) return 1;
    return 0;
}
static int index_bits(int K) { int B = 0; while (((uint64_t)1 << B) < pyramid(8, K)) B++; return B < 8 ? 8 : B; }

static int check(void)
{
    for (int K = 1; K <= 10; K++) {
        enum2 t;
        enum2_init(&t, K, index_bits(K));
        uint64_t radix = 2 * (uint64_t)K + 1, cells = 1, valid = 0;
        for (int i = 0; i < 8; i++) cells *= radix;
        uint8_t *seen = calloc(cells / 8 + 1, 1);
        for (uint64_t idx = 0; idx < (uint64_t)1 << t.B; idx++) {
            int y[8], l1 = 0;
            uint64_t cell = 0;
            if (enum2_point(&t, idx, y)) continue;
            for (int i = 0; i < 8; i++) l1 += abs(y[i]), cell = cell * radix + (uint64_t)(y[i] + K);
            if (l1 != K || (seen[cell >> 3] >> (cell & 7) & 1)) {
                printf("K=%d: index %" PRIu64 " gives %s\n", K, idx, l1 != K ? "a point off the pyramid" : "a repeated point");
                return 1;
            }
            seen[cell >> 3] |= (uint8_t)(1 << (cell & 7));
            valid++;
        }
        free(seen);
        printf("K=%2d B=%2d: %" PRIu64 " valid codes, N(8,K) = %" PRIu64 " %s\n", K, t.B, valid, pyramid(8, K),
               valid == pyramid(8, K) ? "bijection" : "MISMATCH");
        if (valid != pyramid(8, K)) return 1;
    }
    const int presets[][2] = {{6, 15}, {10, 20}, {14, 23}, {22, 27}, {29, 30}, {32, 31}};
    for (int i = 0; i < 6; i++) {
        enum2 t;
        enum2_init(&t, presets[i][0], presets[i][1]);
        printf("preset K=%d B=%d: classes padded to 2^%d, %" PRIu64 " codes used of %" PRIu64 " (%.4f N)\n", t.K, t.B,
               t.pad_shift, t.base[t.K + 1], (uint64_t)1 << t.B, (double)t.base[t.K + 1] / (double)pyramid(8, t.K));
    }
    return 0;
}

static int points(int K, int B)
{
    enum2 t;
    enum2_init(&t, K, B);
    uint64_t idx;
    while (scanf("%" SCNu64, &idx) == 1) {
        int y[8];
        if (enum2_point(&t, idx, y)) { printf("invalid\n"); continue; }
        for (int i = 0; i < 8; i++) printf("%d%c", y[i], i == 7 ? '\n' : ' ');
    }
    return 0;
}

/* ---- the AVX-512 decoder: sixteen groups per step ---- */

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

/* Byte tables (vpermi2b: 128 entries per register pair), dword tables indexed by k1 (32 entries), word
 * tables indexed by c (32 entries). */
typedef struct {
    uint8_t class_of_bucket[128];        /* k1 of code bucket << (B - 7), or the class before it */
    uint8_t c3_of_key[256], c2_of_key[128];
    uint8_t pair_sel[64], lo_sel[64], hi_sel[64], field_perm[64];
    uint32_t next_base[32], base[32], n2[32], field_shift[16];
    float inv_n2[32];
    uint16_t binom3_next[32], binom3[32], binom2_next[32], binom2[32];
} tables;

/* small: K <= 15 (c3 keys below 128, quotients exact in float without correction);
 * wide: a field and its bit offset need more than 32 bits (two qword extractions of 8). */
static void tables_init(tables *t, const enum2 *e, int W, int small, int wide)
{
    memset(t, 0, sizeof *t);
    for (int i = 0; i < 128; i++) {
        uint64_t code = (uint64_t)i << (e->B - 7);
        int k = 0;
        while (k < e->K && e->base[k + 1] <= code) k++;
        t->class_of_bucket[i] = (uint8_t)k;
    }
    for (int j = 0; j < 32; j++) {
        t->next_base[j] = j <= e->K ? (uint32_t)e->base[j + 1] : 0xFFFFFFFFu;
        t->base[j] = j <= e->K ? (uint32_t)e->base[j] : 0;
        t->n2[j] = j <= e->K ? (uint32_t)n4(e->K - j) : 1;
        t->inv_n2[j] = 1.0f / (float)t->n2[j];
        t->binom3_next[j] = (uint16_t)binom(j + 1, 3), t->binom3[j] = (uint16_t)binom(j, 3);
        t->binom2_next[j] = (uint16_t)binom(j + 1, 2), t->binom2[j] = (uint16_t)binom(j, 2);
    }
    /* c3 key: s itself below 64 (128), then one key per 16 (32) ranks: every such range holds at most one
     * C(c, 3) boundary, so the looked-up c3 is right or one less.  c2 key (large K): s below 32, then per 8. */
    for (int key = 0; key < 256; key++) {
        uint64_t s = small ? (key < 64 ? (uint64_t)key : (uint64_t)(key - 60) * 16)
                           : (key < 128 ? (uint64_t)key : (uint64_t)(key - 124) * 32);
        int c = 2;
        while (binom(c + 1, 3) <= s) c++;
        t->c3_of_key[key] = (uint8_t)c;
    }
    for (int key = 0; key < 128; key++) {
        uint64_t s = small ? (uint64_t)key : key < 32 ? (uint64_t)key : (uint64_t)(key - 28) * 8;
        int c = 1;
        while (binom(c + 1, 2) <= s) c++;
        /* small: the whole 2-subset, c2 in the high nibble and c1 in the low one */
        t->c2_of_key[key] = small ? (uint8_t)(c << 4 | (int)(s - binom(c, 2))) : (uint8_t)c;
    }
    /* halves in word lanes (2g + h: half h of group g), pairs in byte lanes (p < 32: pair P of half p,
     * else pair Q of half p - 32), points' bytes as pvq_quantize_x_q8 lays out x: coordinates 0-3 (lo), 4-7 (hi) */
    for (int p = 0; p < 64; p++) t->pair_sel[p] = (uint8_t)(p < 32 ? 2 * p : 64 + 2 * (p - 32));
    for (int g = 0; g < 16; g++)
        for (int h = 0; h < 2; h++) {
            uint8_t *sel = h ? t->hi_sel : t->lo_sel;
            int w = 2 * g + h;
            sel[4 * g] = (uint8_t)w, sel[4 * g + 1] = (uint8_t)(64 + w);
            sel[4 * g + 2] = (uint8_t)(32 + w), sel[4 * g + 3] = (uint8_t)(96 + w);
        }
    if (wide)
        for (int j = 0; j < 8; j++) {
            for (int b = 0; b < 8; b++) t->field_perm[8 * j + b] = (uint8_t)(j * W / 8 + b);
            t->field_shift[2 * j] = (uint32_t)(j * W % 8);
        }
    else
        for (int j = 0; j < 16; j++) {
            for (int b = 0; b < 4; b++) t->field_perm[4 * j + b] = (uint8_t)(j * W / 8 + b);
            t->field_shift[j] = (uint32_t)(j * W % 8);
        }
}

typedef struct {
    __m512i bucket_a, bucket_b, next_a, next_b, base_a, base_b, n2_a, n2_b, inv_a, inv_b;
    __m512i c3_a, c3_b, c3_c, c3_d, c2_a, c2_b, b3n, b3, b2n, b2;
    __m512i pair_sel, lo_sel, hi_sel, perm, shift, field_mask, levels;
    int K, B, b, W;
} kernel;

#define LOAD(field) _mm512_loadu_si512(&t->field)
TARGET static void kernel_init(kernel *k, const tables *t, int K, int B, int b, const float *levels)
{
    k->K = K, k->B = B, k->b = b, k->W = B + b;
    k->bucket_a = LOAD(class_of_bucket[0]), k->bucket_b = LOAD(class_of_bucket[64]);
    k->next_a = LOAD(next_base[0]), k->next_b = LOAD(next_base[16]);
    k->base_a = LOAD(base[0]), k->base_b = LOAD(base[16]);
    k->n2_a = LOAD(n2[0]), k->n2_b = LOAD(n2[16]);
    k->inv_a = LOAD(inv_n2[0]), k->inv_b = LOAD(inv_n2[16]);
    k->c3_a = LOAD(c3_of_key[0]), k->c3_b = LOAD(c3_of_key[64]), k->c3_c = LOAD(c3_of_key[128]), k->c3_d = LOAD(c3_of_key[192]);
    k->c2_a = LOAD(c2_of_key[0]), k->c2_b = LOAD(c2_of_key[64]);
    k->b3n = LOAD(binom3_next), k->b3 = LOAD(binom3), k->b2n = LOAD(binom2_next), k->b2 = LOAD(binom2);
    k->pair_sel = LOAD(pair_sel), k->lo_sel = LOAD(lo_sel), k->hi_sel = LOAD(hi_sel);
    k->perm = LOAD(field_perm), k->shift = LOAD(field_shift);
    k->field_mask = k->W > 32 ? _mm512_set1_epi64((long long)((UINT64_C(1) << k->W) - 1))
                              : _mm512_set1_epi32((int)((UINT64_C(1) << k->W) - 1));
    k->levels = _mm512_loadu_si512(levels);
}
#undef LOAD

/* Shape indices and gain codes of the sixteen groups at p (64 bytes readable from p, or 64 + W when wide). */
TARGET INLINE void fields16(const kernel *k, const uint8_t *p, int wide, __m512i *idx, __m512i *code)
{
    const __m512i code_mask = _mm512_set1_epi32((1 << k->b) - 1);
    if (!wide) {
        __m512i f = _mm512_permutexvar_epi8(k->perm, _mm512_loadu_si512(p));
        f = _mm512_and_si512(_mm512_srlv_epi32(f, k->shift), k->field_mask);
        *idx = _mm512_srli_epi32(f, k->b), *code = _mm512_and_si512(f, code_mask);
        return;
    }
    __m512i f0 = _mm512_permutexvar_epi8(k->perm, _mm512_loadu_si512(p));
    __m512i f1 = _mm512_permutexvar_epi8(k->perm, _mm512_loadu_si512(p + k->W));
    f0 = _mm512_and_si512(_mm512_srlv_epi64(f0, k->shift), k->field_mask);
    f1 = _mm512_and_si512(_mm512_srlv_epi64(f1, k->shift), k->field_mask);
    *idx = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(_mm512_srli_epi64(f0, k->b))),
                              _mm512_cvtepi64_epi32(_mm512_srli_epi64(f1, k->b)), 1);
    *code = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(f0)),
                                                _mm512_cvtepi64_epi32(f1), 1), code_mask);
}

/* The points of sixteen groups as int8: lo (coordinates 0-3 of group g in dword g), hi (4-7). */
TARGET INLINE void decode16(const kernel *k, const uint8_t *p, int small, int wide, __m512i *lo, __m512i *hi, __m512i *code)
{
    __m512i idx;
    fields16(k, p, wide, &idx, code);
    /* the class k1: the bucket's class, or the next one (bytes 1-3 of a lane look up entry 0, class 0) */
    __m512i k1 = _mm512_permutex2var_epi8(k->bucket_a, _mm512_srli_epi32(idx, k->B - 7), k->bucket_b);
    __mmask16 next = _mm512_cmpge_epu32_mask(idx, _mm512_permutex2var_epi32(k->next_a, k1, k->next_b));
    k1 = _mm512_mask_add_epi32(k1, next, k1, _mm512_set1_epi32(1));
    /* r = hA N4(K - k1) + hB: a float reciprocal product, exact for small K, else corrected once */
    __m512i r = _mm512_sub_epi32(idx, _mm512_permutex2var_epi32(k->base_a, k1, k->base_b));
    __m512 inv = _mm512_castsi512_ps(_mm512_permutex2var_epi32(k->inv_a, k1, k->inv_b));
    __m512i n2 = _mm512_permutex2var_epi32(k->n2_a, k1, k->n2_b), hA, hB;
    if (small) {
        hA = _mm512_cvttps_epi32(_mm512_fmadd_ps(_mm512_cvtepi32_ps(r), inv, _mm512_mul_ps(inv, _mm512_set1_ps(0.5f))));
        hB = _mm512_sub_epi32(r, _mm512_mullo_epi32(hA, n2));
    } else {
        hA = _mm512_cvttps_epi32(_mm512_mul_ps(_mm512_cvtepi32_ps(r), inv));
        hB = _mm512_sub_epi32(r, _mm512_mullo_epi32(hA, n2));
        __mmask16 neg = _mm512_cmplt_epi32_mask(hB, _mm512_setzero_si512());
        hA = _mm512_mask_sub_epi32(hA, neg, hA, _mm512_set1_epi32(1)), hB = _mm512_mask_add_epi32(hB, neg, hB, n2);
        __mmask16 over = _mm512_cmpge_epi32_mask(hB, n2);
        hA = _mm512_mask_add_epi32(hA, over, hA, _mm512_set1_epi32(1)), hB = _mm512_mask_sub_epi32(hB, over, hB, n2);
    }
    /* 32 halves in word lanes: pulses kw, index hw */
    const __m512i one = _mm512_set1_epi16(1), low_byte = _mm512_set1_epi16(0xFF);
    __m512i kw = _mm512_or_si512(k1, _mm512_slli_epi32(_mm512_sub_epi32(_mm512_set1_epi32(k->K), k1), 16));
    __m512i hw = _mm512_or_si512(hA, _mm512_slli_epi32(hB, 16));
    __m512i k8 = _mm512_slli_epi16(kw, 3);
    __mmask32 edge = _mm512_cmplt_epu16_mask(hw, _mm512_max_epu16(k8, one));       /* k = 0 is an edge too */
    __m512i u = _mm512_sub_epi16(hw, k8), s = _mm512_srli_epi16(u, 4);
    /* c3: the key's entry or one more */
    __m512i c3;
    if (small) {
        __m512i key = _mm512_min_epu16(s, _mm512_add_epi16(_mm512_srli_epi16(s, 4), _mm512_set1_epi16(60)));
        c3 = _mm512_permutex2var_epi8(k->c3_a, key, k->c3_b);
    } else {
        __m512i key = _mm512_min_epu16(s, _mm512_add_epi16(_mm512_srli_epi16(s, 5), _mm512_set1_epi16(124)));
        c3 = _mm512_mask_blend_epi8(_mm512_movepi8_mask(key), _mm512_permutex2var_epi8(k->c3_a, key, k->c3_b),
                                    _mm512_permutex2var_epi8(k->c3_c, key, k->c3_d));
    }
    c3 = _mm512_and_si512(c3, low_byte);
    c3 = _mm512_mask_add_epi16(c3, _mm512_cmpge_epu16_mask(s, _mm512_permutexvar_epi16(c3, k->b3n)), c3, one);
    __m512i s2 = _mm512_sub_epi16(s, _mm512_permutexvar_epi16(c3, k->b3)), c2, c1;
    if (small) {                                         /* s2 < C(14, 2) = 91: the 2-subset in one byte */
        __m512i both = _mm512_permutex2var_epi8(k->c2_a, s2, k->c2_b);
        c2 = _mm512_and_si512(_mm512_srli_epi16(both, 4), _mm512_set1_epi16(15));
        c1 = _mm512_and_si512(both, _mm512_set1_epi16(15));
    } else {
        __m512i key = _mm512_min_epu16(s2, _mm512_add_epi16(_mm512_srli_epi16(s2, 3), _mm512_set1_epi16(28)));
        c2 = _mm512_and_si512(_mm512_permutex2var_epi8(k->c2_a, key, k->c2_b), low_byte);
        c2 = _mm512_mask_add_epi16(c2, _mm512_cmpge_epu16_mask(s2, _mm512_permutexvar_epi16(c2, k->b2n)), c2, one);
        c1 = _mm512_sub_epi16(s2, _mm512_permutexvar_epi16(c2, k->b2));
    }
    /* the pairs' pulses n, offsets t and quarters q; edges: e < k gives (P, Q) = (0, pair(k, e, q)), else
     * (pair(k, e - k, q), 0) */
    __m512i e = _mm512_srli_epi16(hw, 2);
    __mmask32 side = _mm512_cmpge_epu16_mask(e, kw);
    __m512i nP = _mm512_mask_mov_epi16(c2, edge, _mm512_maskz_mov_epi16(side, kw));
    __m512i tP = _mm512_mask_mov_epi16(c1, edge, _mm512_maskz_sub_epi16(side, e, kw));
    __m512i tQ = _mm512_mask_mov_epi16(_mm512_sub_epi16(_mm512_sub_epi16(c3, c2), one), edge, _mm512_maskz_mov_epi16(~side, e));
    __m512i qP = _mm512_mask_mov_epi16(_mm512_srli_epi16(u, 2), edge, hw);     /* qQ = u & 3 = hw & 3 */
    __m512i nQ = _mm512_sub_epi16(kw, nP);
    /* 64 pairs in byte lanes: rot^q (t, n - t), only the two low bits of q matter */
    __m512i n = _mm512_permutex2var_epi8(nP, k->pair_sel, nQ);
    __m512i t = _mm512_permutex2var_epi8(tP, k->pair_sel, tQ);
    __m512i q = _mm512_permutex2var_epi8(qP, k->pair_sel, hw);
    __m512i z = _mm512_sub_epi8(n, t);
    __mmask64 odd = _mm512_test_epi8_mask(q, _mm512_set1_epi8(1));
    __mmask64 neg_first = _mm512_test_epi8_mask(_mm512_add_epi8(q, _mm512_set1_epi8(1)), _mm512_set1_epi8(2));
    __mmask64 neg_second = _mm512_test_epi8_mask(q, _mm512_set1_epi8(2));
    __m512i first = _mm512_mask_blend_epi8(odd, t, z), second = _mm512_mask_blend_epi8(odd, z, t);
    first = _mm512_mask_sub_epi8(first, neg_first, _mm512_setzero_si512(), first);
    second = _mm512_mask_sub_epi8(second, neg_second, _mm512_setzero_si512(), second);
    *lo = _mm512_permutex2var_epi8(first, k->lo_sel, second);
    *hi = _mm512_permutex2var_epi8(first, k->hi_sel, second);
}

/* x with the sign of y applied */
TARGET INLINE __m512i sign_of(__m512i x, __m512i y)
{
    return _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(y), _mm512_setzero_si512(), x);
}

/* acc += the step's sixteen group products (lanes >= live add nothing), with the format's
 * s = gain / sqrtf(||y||^2) as version 1's integer dot computes it */
TARGET INLINE void accumulate(const kernel *k, __m512i lo, __m512i hi, __m512i code, const int8_t *xp, float xs,
                              __mmask16 live, __m512 *acc)
{
    __m512i alo = _mm512_abs_epi8(lo), ahi = _mm512_abs_epi8(hi);
    __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), alo, sign_of(_mm512_loadu_si512(xp), lo));
    d = _mm512_dpbusd_epi32(d, ahi, sign_of(_mm512_loadu_si512(xp + 64), hi));
    __m512i sq = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), alo, alo), ahi, ahi);
    __m512 level = _mm512_permutexvar_ps(code, _mm512_castsi512_ps(k->levels));
    __m512 s = _mm512_div_ps(level, _mm512_sqrt_ps(_mm512_cvtepi32_ps(sq)));
    *acc = _mm512_mask3_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(s, _mm512_set1_ps(xs)), *acc, live);
}

/* y = W x over rows of n weights (rows back to back; 64 + W readable bytes past the last), two steps side by
 * side; a row's last partial step decodes the next bytes and adds nothing from them. */
TARGET INLINE void matvec(const kernel *k, const uint8_t *data, const uint16_t *scales, int64_t rows, int64_t n,
                          const int8_t *xq, const float *xs, float *y, int small, int wide)
{
    const int64_t G = n / 8;
    const size_t rb = (size_t)(G * k->W / 8);
    for (int64_t row = 0; row < rows; row++) {
        const uint8_t *p = data + row * rb;
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
        int64_t g = 0;
        for (; g + 32 <= G; g += 32) {
            __m512i lo0, hi0, code0, lo1, hi1, code1;
            decode16(k, p + g / 8 * k->W, small, wide, &lo0, &hi0, &code0);
            decode16(k, p + (g + 16) / 8 * k->W, small, wide, &lo1, &hi1, &code1);
            accumulate(k, lo0, hi0, code0, xq + 8 * g, xs[g / 16], 0xFFFF, &acc0);
            accumulate(k, lo1, hi1, code1, xq + 8 * g + 128, xs[g / 16 + 1], 0xFFFF, &acc1);
        }
        for (; g < G; g += 16) {
            __m512i lo, hi, code;
            decode16(k, p + g / 8 * k->W, small, wide, &lo, &hi, &code);
            accumulate(k, lo, hi, code, xq + 8 * g, xs[g / 16], G - g >= 16 ? 0xFFFF : (__mmask16)((1u << (G - g)) - 1), &acc0);
        }
        y[row] = _cvtsh_ss(scales[row]) * _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    }
}

TARGET static void matvec_any(const kernel *k, const uint8_t *data, const uint16_t *scales, int64_t rows, int64_t n,
                              const int8_t *xq, const float *xs, float *y)
{
    int small = k->K <= 14, wide = wide_fields(k->W);
    if (small && !wide) matvec(k, data, scales, rows, n, xq, xs, y, 1, 0);
    else if (small) matvec(k, data, scales, rows, n, xq, xs, y, 1, 1);
    else if (!wide) matvec(k, data, scales, rows, n, xq, xs, y, 0, 0);
    else matvec(k, data, scales, rows, n, xq, xs, y, 0, 1);
}

/* ---- the benchmark ---- */

static uint64_t rng = 0x9E3779B97F4A7C15u;
static uint64_t next_random(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

static void put_field(uint8_t *row, int64_t g, int W, uint64_t v)
{
    uint64_t bit = (uint64_t)g * (uint64_t)W;
    for (int i = 0; i < W; i++, bit++)
        if (v >> i & 1) row[bit >> 3] |= (uint8_t)(1u << (bit & 7));
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Every step of the first rows decoded by the kernel and by the reference. */
TARGET static int verify(const kernel *k, const enum2 *e, const uint8_t *data, int64_t rows, int64_t n)
{
    const int64_t G = n / 8;
    const size_t rb = (size_t)(G * k->W / 8);
    int small = k->K <= 14, wide = wide_fields(k->W);
    for (int64_t row = 0; row < rows && row < 256; row++)
        for (int64_t g = 0; g + 16 <= G; g += 16) {
            __m512i lo, hi, code;
            int8_t b[128];
            if (small && wide) decode16(k, data + row * rb + g / 8 * k->W, 1, 1, &lo, &hi, &code);
            else if (small) decode16(k, data + row * rb + g / 8 * k->W, 1, 0, &lo, &hi, &code);
            else if (wide) decode16(k, data + row * rb + g / 8 * k->W, 0, 1, &lo, &hi, &code);
            else decode16(k, data + row * rb + g / 8 * k->W, 0, 0, &lo, &hi, &code);
            _mm512_storeu_si512(b, lo), _mm512_storeu_si512(b + 64, hi);
            for (int j = 0; j < 16; j++) {
                int y[8];
                enum2_point(e, pvq_read_field(data + row * rb, g + j, k->W) >> k->b, y);
                for (int i = 0; i < 8; i++)
                    if (y[i] != b[64 * (i / 4) + 4 * j + i % 4]) {
                        printf("row %" PRId64 " group %" PRId64 ": the kernel's point differs\n", row, g + j);
                        return 1;
                    }
            }
        }
    return 0;
}

/* The kernel's products against float64 sums of the reference points (up to float32 rounding). */
static int check_products(const kernel *k, const enum2 *e, const float *levels, const uint8_t *data,
                          const uint16_t *scales, int64_t rows, int64_t n, const int8_t *xq, const float *xs, float *y)
{
    const size_t rb = (size_t)(n / 8 * k->W / 8);
    matvec_any(k, data, scales, rows, n, xq, xs, y);
    for (int64_t row = 0; row < rows && row < 256; row++) {
        double sum = 0, mag = 0;
        for (int64_t g = 0; g < n / 8; g++) {
            uint64_t f = pvq_read_field(data + row * rb, g, k->W);
            int pt[8], q = 0;
            long dot = 0;
            enum2_point(e, f >> k->b, pt);
            for (int i = 0; i < 8; i++) q += pt[i] * pt[i], dot += (long)pt[i] * xq[128 * (g / 16) + 64 * (i / 4) + 4 * (g % 16) + i % 4];
            double s = levels[f & ((1u << k->b) - 1)] / sqrt((double)q) * xs[g / 16];
            sum += s * (double)dot, mag += fabs(s * (double)dot);
        }
        sum *= pvq_half_to_float(scales[row]), mag *= pvq_half_to_float(scales[row]);
        if (fabs(y[row] - sum) > 1e-5 * mag + 1e-30) {
            printf("row %" PRId64 ": product %g, reference %g\n", row, (double)y[row], sum);
            return 1;
        }
    }
    return 0;
}

static int bench(int K, int b, int64_t n, int64_t rows, int reps)
{
    const int B = index_bits(K), W = B + b;
    if (n % 64 || K > 29 || b > 4 || !isa_cpu_supports(ISA_AVX512)) {
        fprintf(stderr, "bench: n a multiple of 64, K <= 29, b <= 4, an AVX-512 VBMI CPU\n");
        return 2;
    }
    enum2 e;
    enum2_init(&e, K, B);
    for (int j = 0; j <= K; j++)
        if (e.base[j + 1] - e.base[j] < (UINT64_C(1) << (B - 7))) {   /* K = 22: no room to pad */
            fprintf(stderr, "bench: K=%d has classes narrower than a bucket, which this decoder does not search\n", K);
            return 2;
        }
    float levels[16];
    for (int i = 0; i < 16; i++) levels[i] = 0.05f + 0.01f * (float)i;
    static tables t;
    tables_init(&t, &e, W, K <= 14, wide_fields(W));
    kernel k;
    kernel_init(&k, &t, K, B, b, levels);
    pvq_codec v1;
    char err[256];
    if (pvq_codec_init(&v1, PVQ_TYPE_BASE | 8u << 20 | (uint32_t)b << 16 | (uint32_t)K, levels, (size_t)1 << b, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    const size_t rb = (size_t)(n / 8 * W / 8), bytes = (size_t)rows * rb + 128;
    uint8_t *w2 = calloc(bytes, 1), *w1 = calloc(bytes, 1);
    uint16_t *scales = malloc((size_t)rows * sizeof *scales);
    int8_t *xq = malloc((size_t)(n + 127) / 128 * 128);
    float *x = malloc((size_t)n * sizeof *x), *xs = malloc((size_t)(n + 127) / 128 * sizeof *xs), *y = malloc((size_t)rows * sizeof *y);
    for (int64_t r = 0; r < rows; r++) {
        scales[r] = 0x3C00;
        for (int64_t g = 0; g < n / 8; g++) {
            uint64_t idx, mask = (UINT64_C(1) << B) - 1, code = next_random() & ((1u << b) - 1);
            int pt[8];
            do idx = next_random() & mask; while (enum2_point(&e, idx, pt));  /* uniform over valid codes */
            put_field(w2 + r * rb, g, W, idx << b | code);
            put_field(w1 + r * rb, g, W, (next_random() % v1.n_points) << b | code);
        }
    }
    for (int64_t i = 0; i < n; i++) x[i] = (float)(next_random() % 1000) / 1000.0f - 0.5f;
    if (verify(&k, &e, w2, rows, n)) return 1;
    pvq_quantize_x_q8(x, n, xq, xs);
    if (check_products(&k, &e, levels, w2, scales, rows, n, xq, xs, y)) return 1;
    double best1 = 1e30, best2 = 1e30, sink = 0;
    for (int rep = 0; rep < reps; rep++) {            /* alternating, best of reps */
        double t0 = now();
        pvq_matvec_q8_avx512(&v1, w1, scales, rows, n, xq, xs, y);
        double t1 = now();
        sink += y[rows - 1];
        matvec_any(&k, w2, scales, rows, n, xq, xs, y);
        double t2 = now();
        sink += y[rows - 1];
        if (t1 - t0 < best1) best1 = t1 - t0;
        if (t2 - t1 < best2) best2 = t2 - t1;
    }
    double gw = (double)n * (double)rows * 1e-9;
    printf("K=%d b=%d n=%" PRId64 " rows=%" PRId64 ": v1 %.2f G weights/s, v2 %.2f G weights/s, %.2fx [%g]\n", K, b, n, rows,
           gw / best1, gw / best2, best1 / best2, sink);
    pvq_codec_free(&v1);
    free(w1), free(w2), free(scales), free(xq), free(x), free(xs), free(y);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "check")) return check();
    if (argc == 4 && !strcmp(argv[1], "points")) return points(atoi(argv[2]), atoi(argv[3]));
    if (argc == 7 && !strcmp(argv[1], "bench"))
        return bench(atoi(argv[2]), atoi(argv[3]), atoll(argv[4]), atoll(argv[5]), atoi(argv[6]));
    fprintf(stderr, "usage: %s check | points K B < indices | bench K b n rows reps\n", argv[0]);
    return 2;
}
