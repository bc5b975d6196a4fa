/* PVQ layouts: type ids, exact count tables, the D == 8 fast-path tables, validation. */
#include "pvq_codec.h"
#include "pvq_enum.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int bit_length(uint64_t v)
{
    int n = 0;
    while (v) { n++; v >>= 1; }
    return n;
}

/* The fewest groups whose W-bit fields fill whole bytes: 8 / gcd(W, 8). */
static int block_groups(int W)
{
    int g = 8;
    while (W % 2 == 0 && g > 1) { W /= 2; g /= 2; }
    return g;
}

int pvq_type_params(uint32_t type_id, int *D, int *K, int *gain_bits, char *err, size_t errlen)
{
    if ((type_id & 0xF0000000u) != PVQ_TYPE_BASE)
        return fail(err, errlen, "type id %#x is not a PVQ type", type_id);
    *D = (int)((type_id >> 20) & 0xFF);
    *gain_bits = (int)((type_id >> 16) & 0xF);
    *K = (int)(type_id & 0xFFFF);
    if (*D < 2 || *D > PVQ_MAX_D)
        return fail(err, errlen, "PVQ type %#x: D=%d out of range [2, %d]", type_id, *D, PVQ_MAX_D);
    if (*K < 1)
        return fail(err, errlen, "PVQ type %#x: K=%d out of range [1, %d]", type_id, *K, PVQ_MAX_K);
    if (*gain_bits < 1 || *gain_bits > PVQ_MAX_GAIN_BITS)
        return fail(err, errlen, "PVQ type %#x: gain bits %d out of range [1, %d]", type_id,
                    *gain_bits, PVQ_MAX_GAIN_BITS);
    return 0;
}

/* N(d, k) for d <= D, k <= K by N(d,k) = N(d-1,k) + N(d,k-1) + N(d-1,k-1); fails when N(D,K)
 * needs more than `max_bits` bits (every entry is <= N(D,K), so nothing else can overflow). */
static uint64_t *count_table(int D, int K, int max_bits)
{
    uint64_t *t = calloc((size_t)(D + 1) * (size_t)(K + 1), sizeof *t);
    if (!t) return NULL;
    const uint64_t cap = UINT64_C(1) << max_bits;
    for (int d = 0; d <= D; d++) {
        for (int k = 0; k <= K; k++) {
            uint64_t v;
            if (k == 0) v = 1;
            else if (d == 0) v = 0;
            else {
                v = t[(d - 1) * (K + 1) + k] + t[d * (K + 1) + k - 1] + t[(d - 1) * (K + 1) + k - 1];
                if (v > cap) { free(t); return NULL; }
            }
            t[d * (K + 1) + k] = v;
        }
    }
    return t;
}

static uint64_t N(const pvq_codec *c, int d, int k) { return c->count[d * (c->K + 1) + k]; }

/* Whether P(d, k) is enumerated by the halves' classes (d = 3, d >= 5); d = 1, 2, 4 have closed forms. */
static int has_classes(int d) { return d == 3 || d >= 5; }

/* Point of P(d, k) with index r below the top level (classes dense), iterative over the split tree:
 * a stack of (dimension, pulses, first coordinate, index). */
static void decode_sub(const pvq_codec *c, uint64_t r, int d, int k, int32_t *y)
{
    struct { int d, k, col; uint64_t r; } st[2 * PVQ_MAX_D];
    int top = 0;
    st[top].d = d; st[top].k = k; st[top].col = 0; st[top].r = r; top++;
    while (top) {
        top--;
        d = st[top].d; k = st[top].k; r = st[top].r;
        int col = st[top].col;
        if (d == 1) { y[col] = r == 0 ? k : -k; continue; }
        if (d == 2) { pvq_pair_point(k, r, y + col); continue; }
        if (d == 4) { pvq_half_point(k, r, y + col); continue; }
        int d1 = d / 2, d2 = d - d1, k1 = 0;
        for (;; k1++) {
            uint64_t block = N(c, d1, k1) * N(c, d2, k - k1);
            if (r < block) break;
            r -= block;
        }
        uint64_t n2 = N(c, d2, k - k1);
        st[top].d = d1; st[top].k = k1; st[top].col = col; st[top].r = r / n2; top++;
        st[top].d = d2; st[top].k = k - k1; st[top].col = col + d1; st[top].r = r % n2; top++;
    }
}

/* The top-level class of a code below class_base[K + 1]: the largest k1 with class_base[k1] <= index. */
static int top_class(const pvq_codec *c, uint64_t index)
{
    int lo = 0, hi = c->K;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (c->class_base[mid] <= index) lo = mid; else hi = mid - 1;
    }
    return lo;
}

int pvq_index_is_point(const pvq_codec *c, uint64_t index)
{
    if (!c->class_base) return index < c->n_points;
    if (index >= c->class_base[c->K + 1]) return 0;
    int k1, d1 = c->D / 2;
    if (c->fast) {         /* every class is at least a bucket wide: the bucket's class or the next */
        k1 = c->fast->bucket_k1[index >> c->fast->bucket_shift];
        k1 += c->fast->cum[k1 + 1] <= index;
    } else {
        k1 = top_class(c, index);
    }
    return index - c->class_base[k1] < N(c, d1, k1) * N(c, c->D - d1, c->K - k1);
}

void pvq_decode_point(const pvq_codec *c, uint64_t index, int32_t *y)
{
    if (!c->class_base) { decode_sub(c, index, c->D, c->K, y); return; }
    int k1 = top_class(c, index), d1 = c->D / 2, d2 = c->D - d1;
    uint64_t r = index - c->class_base[k1], n2 = N(c, d2, c->K - k1);
    decode_sub(c, r / n2, d1, k1, y);
    decode_sub(c, r % n2, d2, c->K - k1, y + d1);
}

/* The top level's classes: aligned to 2^(B - 7), else 2^(B - 8), when all of them fit the B-bit
 * index, else dense (docs/format.md).  NULL without memory. */
static uint64_t *class_bases(const pvq_codec *c, int *align)
{
    int d1 = c->D / 2, d2 = c->D - d1, B = c->index_bits;
    uint64_t *base = malloc((size_t)(c->K + 2) * sizeof *base);
    if (!base) return NULL;
    *align = 0;
    for (int a = B - 7; a >= B - 8 && a > 0 && !*align; a--) {
        uint64_t total = 0, unit = UINT64_C(1) << a;
        for (int k1 = 0; k1 <= c->K; k1++) total += (N(c, d1, k1) * N(c, d2, c->K - k1) + unit - 1) / unit * unit;
        if (total <= UINT64_C(1) << B) *align = a;
    }
    uint64_t unit = UINT64_C(1) << *align;
    base[0] = 0;
    for (int k1 = 0; k1 <= c->K; k1++)
        base[k1 + 1] = base[k1] + (N(c, d1, k1) * N(c, d2, c->K - k1) + unit - 1) / unit * unit;
    return base;
}

static void free_fast(pvq_fast8 *f)
{
    if (!f) return;
    free(f->cum); free(f->n2); free(f->inv_n2); free(f->base_lo); free(f->base_hi); free(f->lut4); free(f->bucket_k1);
    free(f);
}

/* The closed-form decoders' tables (pvq_fast8: avx2_cum ... avx2_binom2, class_of_bucket ... binom2). */
static void build_halves16(const pvq_codec *c, pvq_fast8 *f)
{
    const int K = c->K, small = K <= 14;
    f->bucket_bits = c->class_align ? c->index_bits - c->class_align : 0;
    for (int i = 0; c->class_align && i < 256; i++) {
        uint64_t code = (uint64_t)i << c->class_align;
        int k = 0;
        while (k < K && c->class_base[k + 1] <= code) k++;
        f->class_of_bucket[i] = (uint8_t)k;
    }
    for (int j = 1; K <= PVQ_ARITH_MAX_K && j <= K; j++)      /* the table's rows: the closed form's K only */
        for (int l = 0; l < 8; l++) f->avx2_cum[j][l] = (uint32_t)c->class_base[j] - 1;
    for (int j = 0; j < 32; j++) {
        uint64_t b3 = pvq_binom3((uint64_t)j + 2), b2 = pvq_binom2((uint64_t)j);
        for (int l = 0; l < 2; l++) {
            f->avx2_binom3[2 * (j >> 4)][16 * l + (j & 15)] = (uint8_t)b3;
            f->avx2_binom3[2 * (j >> 4) + 1][16 * l + (j & 15)] = (uint8_t)(b3 >> 8);
            f->avx2_binom2[2 * (j >> 4)][16 * l + (j & 15)] = (uint8_t)b2;
            f->avx2_binom2[2 * (j >> 4) + 1][16 * l + (j & 15)] = (uint8_t)(b2 >> 8);
        }
        for (int l = 0; l < 16; l++) {
            f->avx2_thr3[j][l] = (int16_t)(pvq_binom3((uint64_t)j) - 1);
            f->avx2_thr2[j][l] = (int16_t)(pvq_binom2((uint64_t)j) - 1);
        }
        f->k_pair[j] = j <= K ? (uint32_t)j | (uint32_t)(K - j) << 16 : 0;
        f->binom3_next[j] = (uint16_t)pvq_binom3((uint64_t)j + 3); f->binom3[j] = (uint16_t)pvq_binom3((uint64_t)j + 2);
        f->binom2_next[j] = (uint16_t)pvq_binom2((uint64_t)j + 1); f->binom2[j] = (uint16_t)pvq_binom2((uint64_t)j);
    }
    for (int key = 0; key < 256; key++) {
        uint64_t s = small ? (key < 64 ? (uint64_t)key : (uint64_t)(key - 60) * 16)
                           : (key < 128 ? (uint64_t)key : (uint64_t)(key - 124) * 32);
        f->c3_of_key[key] = (uint8_t)(pvq_unrank_binom(3, s, 2, 40) - 2);
    }
    for (int key = 0; key < 128; key++) {
        uint64_t s = small || key < 32 ? (uint64_t)key : (uint64_t)(key - 28) * 8, c2 = pvq_unrank_binom(2, s, 1, 40);
        f->c2_of_key[key] = (uint8_t)(small ? c2 << 4 | (s - pvq_binom2(c2)) : c2);
    }
    for (int g = 0; g < 16; g++) {
        f->pair_sel[4 * g] = (uint8_t)(4 * g); f->pair_sel[4 * g + 1] = (uint8_t)(64 + 4 * g);
        f->pair_sel[4 * g + 2] = (uint8_t)(4 * g + 2); f->pair_sel[4 * g + 3] = (uint8_t)(64 + 4 * g + 2);
        for (int i = 0; i < 8; i++) {      /* coordinate i: pair i / 2, its first or second value */
            uint8_t *sel = i < 4 ? f->lo_sel : f->hi_sel;
            sel[4 * g + i % 4] = (uint8_t)(64 * (i & 1) + 4 * g + i / 2);
        }
    }
}

/* Whether the SIMD kernels may gather the halves from lut4: at most 128 KB, which stays in L2 beside the rows. */
static int lut4_gathers(const pvq_fast8 *f) { return f->lut4_len * sizeof(uint32_t) <= (128 << 10); }

/* Fast path for D == 8: halves of 4, indices below 2^31 (signed 32-bit compares), |y_i| <= 127. */
static pvq_fast8 *build_fast8(const pvq_codec *c)
{
    if (c->D != 8 || c->index_bits > 31 || c->K > 127) return NULL;
    int K = c->K;
    pvq_fast8 *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->ntab = 16;                 /* a power of two above K + 1: the binary search needs a sentinel */
    while (f->ntab < K + 2) f->ntab *= 2;
    f->cum = malloc(f->ntab * sizeof(uint32_t));
    f->n2 = calloc(f->ntab, sizeof(uint32_t));
    f->inv_n2 = calloc(f->ntab, sizeof(float));
    f->base_lo = calloc(f->ntab, sizeof(uint32_t));
    f->base_hi = calloc(f->ntab, sizeof(uint32_t));
    uint32_t *base4 = malloc((K + 2) * sizeof(uint32_t));
    if (!f->cum || !f->n2 || !f->inv_n2 || !f->base_lo || !f->base_hi || !base4) goto fail;
    base4[0] = 0;
    for (int k = 0; k <= K; k++) base4[k + 1] = base4[k] + (uint32_t)N(c, 4, k);
    f->lut4_len = base4[K + 1];
    f->lut4 = malloc(f->lut4_len * sizeof(uint32_t));
    if (!f->lut4) goto fail;
    for (int k = 0; k <= K; k++) {
        for (uint32_t i = 0; i < (uint32_t)N(c, 4, k); i++) {
            int32_t y[4];
            decode_sub(c, i, 4, k, y);
            f->lut4[base4[k] + i] = (uint32_t)(uint8_t)y[0] | (uint32_t)(uint8_t)y[1] << 8 |
                                    (uint32_t)(uint8_t)y[2] << 16 | (uint32_t)(uint8_t)y[3] << 24;
        }
    }
    f->gather_halves = lut4_gathers(f) && isa_fast_gathers();
    uint64_t widest = 0;
    for (int j = 0; j <= K; j++)
        if (N(c, 4, j) * N(c, 4, K - j) + N(c, 4, K - j) > widest) widest = N(c, 4, j) * N(c, 4, K - j) + N(c, 4, K - j);
    /* (r + 1/2) / n2 lies at least 1/(2 n2) from an integer; the float product errs by less than
     * (r + n2) 2^-23 / n2, so truncation is exact when r + n2 < 2^22. */
    f->exact_div = widest < (UINT64_C(1) << 22);
    for (int j = 0; j < f->ntab; j++) {
        if (j <= K) {
            f->cum[j] = (uint32_t)c->class_base[j];
            f->n2[j] = (uint32_t)N(c, 4, K - j);
            f->inv_n2[j] = 1.0f / (float)f->n2[j];
            f->base_lo[j] = base4[j];
            f->base_hi[j] = base4[K - j];
        } else {
            f->cum[j] = 0x7FFFFFFFu;      /* above every index (indices < 2^31) */
        }
    }
    uint64_t narrowest = UINT64_MAX;
    for (int j = 0; j <= K; j++)
        if (c->class_base[j + 1] - c->class_base[j] < narrowest) narrowest = c->class_base[j + 1] - c->class_base[j];
    f->bucket_shift = c->class_align ? c->class_align : bit_length(narrowest) - 1;
    size_t nb = f->bucket_len = (size_t)((c->class_base[K + 1] - 1) >> f->bucket_shift) + 1;
    f->bucket_k1 = malloc(nb);
    if (!f->bucket_k1) goto fail;
    for (size_t bkt = 0, k1 = 0; bkt < nb; bkt++) {
        while (k1 < (size_t)K && f->cum[k1 + 1] <= (uint64_t)bkt << f->bucket_shift) k1++;
        f->bucket_k1[bkt] = (uint8_t)k1;
    }
    for (int j = 0; j < 8; j++) {
        int byte = j * c->field_bits / 8;
        f->field_shift[j] = (uint64_t)(j * c->field_bits % 8);
        for (int t = 0; t < 8; t++) f->field_perm[8 * j + t] = (uint8_t)(byte + t < 64 ? byte + t : 63);
    }
    const int W = c->field_bits;
    f->avx2_base1 = 4 * W / 8;
    f->avx2_narrow = W >= 16 && W <= 32;     /* W >= 16: a chunk that is not its row's last has 2W >= 32 bytes after it */
    for (int j = 0; j < 8; j++) {
        int off = j * W - (j < 4 ? 0 : 8 * f->avx2_base1), byte = off / 8, shift = off % 8;
        if (shift + W > 32 || byte + 3 >= 16) f->avx2_narrow = 0;
        f->avx2_shift[j] = (uint32_t)shift;
        for (int t = 0; t < 4; t++) f->avx2_shuf[4 * j + t] = (uint8_t)((byte + t) & 15);
    }
    for (int l = 0; l < 4; l++) {      /* lanes: fields 0, 1 | 4, 5 of the first register, 2, 3 | 6, 7 of the second */
        int first = (l & 1) * 4 + (l >> 1) * 2, base = first * W / 8;
        f->avx2_wide_base[l] = base;
        for (int i = 0; i < 2; i++) {
            int j = first + i, slot = (l >> 1) * 4 + (l & 1) * 2 + i;     /* qword slot of the two registers */
            f->avx2_wide_shift[slot] = (uint64_t)(j * W % 8);
            for (int t = 0; t < 8; t++) f->avx2_wide_shuf[8 * slot + t] = (uint8_t)(j * W / 8 - base + t);
        }
    }
    f->narrow = c->field_bits <= 32;
    for (int j = 0; j < 16; j++) {
        int byte = j * c->field_bits / 8, shift = j * c->field_bits % 8;
        if (shift + c->field_bits > 32) f->narrow = 0;
        f->field_shift32[j] = (uint32_t)shift;
        for (int t = 0; t < 4; t++) f->field_perm32[4 * j + t] = (uint8_t)(byte + t < 64 ? byte + t : 63);
    }
    build_halves16(c, f);
    free(base4);
    return f;
fail:
    free(base4);
    free_fast(f);
    return NULL;
}

int pvq_codec_init(pvq_codec *c, uint32_t type_id, const float *levels, size_t n_levels,
                   char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    int D, K, b;
    if (pvq_type_params(type_id, &D, &K, &b, err, errlen)) return -1;
    if (n_levels != (size_t)1 << b)
        return fail(err, errlen, "PVQ: %zu gain levels for %d gain bits (need %d)", n_levels, b, 1 << b);
    for (size_t i = 0; i < n_levels; i++) {
        if (!isfinite(levels[i]) || levels[i] < 0 || (i && !(levels[i] > levels[i - 1])))
            return fail(err, errlen, "PVQ: gain level %zu (%g) is not finite, non-negative and increasing",
                        i, (double)levels[i]);
    }
    c->count = count_table(D, K, PVQ_MAX_FIELD_BITS - b);
    if (!c->count)
        return fail(err, errlen, "PVQ D=%d K=%d b=%d: index + gain field exceeds %d bits (or out of memory)",
                    D, K, b, PVQ_MAX_FIELD_BITS);
    c->D = D; c->K = K; c->gain_bits = b;
    c->n_points = N(c, D, K);
    c->index_bits = bit_length(c->n_points - 1);
    c->field_bits = c->index_bits + b;
    if (c->field_bits > PVQ_MAX_FIELD_BITS) {
        pvq_codec_free(c);
        return fail(err, errlen, "PVQ D=%d K=%d b=%d: field of %d bits exceeds %d", D, K, b,
                    c->field_bits, PVQ_MAX_FIELD_BITS);
    }
    c->block_groups = block_groups(c->field_bits);
    memcpy(c->levels, levels, n_levels * sizeof(float));
    if (has_classes(D) && !(c->class_base = class_bases(c, &c->class_align))) {
        pvq_codec_free(c);
        return fail(err, errlen, "PVQ D=%d K=%d b=%d: out of memory", D, K, b);
    }
    c->fast = build_fast8(c);
    return 0;
}

void pvq_codec_free(pvq_codec *c)
{
    free(c->count);
    free(c->class_base);
    free_fast(c->fast);
    memset(c, 0, sizeof *c);
}

void pvq_codec_set_gather_halves(pvq_codec *c, int gather)
{
    if (c->fast) c->fast->gather_halves = gather && lut4_gathers(c->fast);
}

size_t pvq_row_bytes(const pvq_codec *c, int64_t n)
{
    int64_t block = (int64_t)c->block_groups * c->D;
    if (n <= 0 || n % block) return 0;
    return (size_t)(n / block) * (size_t)(c->block_groups * c->field_bits / 8);
}

size_t pvq_type_row_bytes(uint32_t type_id, int64_t n)
{
    int D, K, b;
    if (pvq_type_params(type_id, &D, &K, &b, NULL, 0)) return 0;
    uint64_t *count = count_table(D, K, PVQ_MAX_FIELD_BITS - b);
    if (!count) return 0;
    pvq_codec c = {.D = D, .K = K, .gain_bits = b};
    c.field_bits = bit_length(count[D * (K + 1) + K] - 1) + b;
    free(count);
    c.block_groups = block_groups(c.field_bits);
    return c.field_bits > PVQ_MAX_FIELD_BITS ? 0 : pvq_row_bytes(&c, n);
}

int64_t pvq_validate_row(const pvq_codec *c, const uint8_t *row, int64_t n)
{
    int64_t G = n / c->D;
    for (int64_t g = 0; g < G; g++)
        if (!pvq_index_is_point(c, pvq_read_field(row, g, c->field_bits) >> c->gain_bits)) return g;
    return -1;
}

int pvq_validate_tensor(const pvq_codec *c, const uint8_t *data, size_t nbytes, int64_t n,
                        int64_t rows, const uint16_t *scales_f16, char *err, size_t errlen)
{
    size_t rb = pvq_row_bytes(c, n);
    if (rb == 0)
        return fail(err, errlen, "PVQ D=%d K=%d b=%d: row length %lld is not a multiple of %d",
                    c->D, c->K, c->gain_bits, (long long)n, c->block_groups * c->D);
    if (rows < 0 || (uint64_t)rows > SIZE_MAX / rb || rb * (size_t)rows != nbytes)
        return fail(err, errlen, "PVQ tensor: %zu bytes, expected %lld rows of %zu bytes", nbytes,
                    (long long)rows, rb);
    for (int64_t r = 0; r < rows; r++) {
        if (scales_f16 && (scales_f16[r] & 0x7C00) == 0x7C00)
            return fail(err, errlen, "PVQ tensor: row %lld has a non-finite scale", (long long)r);
        int64_t g = pvq_validate_row(c, data + (size_t)r * rb, n);
        if (g >= 0)
            return fail(err, errlen, "PVQ tensor: row %lld group %lld: shape index %llu is no point of P(%d,%d)",
                        (long long)r, (long long)g,
                        (unsigned long long)(pvq_read_field(data + (size_t)r * rb, g, c->field_bits) >> c->gain_bits),
                        c->D, c->K);
    }
    return 0;
}

void pvq_select_kernels(const pvq_codec *c, isa_id isa, pvq_kernels *k)
{
    k->name = "ref";
    k->dequantize = pvq_dequantize_row_ref;
    k->dot = pvq_dot_row_ref;
    k->matvec_q8 = c->D == 8 ? pvq_matvec_q8_ref : NULL;
    k->repack = NULL;
    k->dot_repacked = NULL;
    k->tile_repacked = NULL;
    if (!c->fast) return;
    int avx2 = isa >= ISA_AVX2;
    k->repack = avx2 ? pvq_repack_row_avx2 : pvq_repack_row;
    k->dot_repacked = avx2 ? pvq_dot_repacked_avx2 : pvq_dot_repacked_ref;
    k->tile_repacked = isa == ISA_AVX512 ? pvq_tile_repacked_avx512 : avx2 ? pvq_tile_repacked_avx2 : pvq_tile_repacked_ref;
    if (isa == ISA_AVX512) {
        k->name = "avx512";
        k->dequantize = pvq_dequantize_row_avx512;
        k->dot = pvq_dot_row_avx512;
        k->matvec_q8 = pvq_matvec_q8_avx512;
    } else if (avx2) {
        k->name = "avx2";
        k->dequantize = pvq_dequantize_row_avx2;
        k->dot = pvq_dot_row_avx2;
        k->matvec_q8 = pvq_matvec_q8_avx2;
    } else {
        k->name = "scalar";
        k->dequantize = pvq_dequantize_row_scalar;
        k->dot = pvq_dot_row_scalar;
        k->matvec_q8 = pvq_matvec_q8_scalar;
    }
}
