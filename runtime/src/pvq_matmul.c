/* PVQ weights in the runtime: loading and the row-range products (see pvq_matmul.h). */
#include "pvq_matmul.h"
#include "errmsg.h"
#include "model.h"
#include "types.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PVQ_FORMAT_VERSION 2

/* Finds or builds the layout of (type id, levels) in set. */
static const pvq_layout *layout_for(pvq_layouts *set, uint32_t type_id, const float *levels, size_t n_levels,
                                    char *err, size_t err_len) {
    for (int i = 0; i < set->n; i++) {
        const pvq_codec *c = &set->items[i]->codec;
        uint32_t id = T_PVQ | (uint32_t)c->D << 20 | (uint32_t)c->gain_bits << 16 | (uint32_t)c->K;
        if (id == type_id && !memcmp(c->levels, levels, n_levels * sizeof(float))) return set->items[i];
    }
    pvq_layout **grown = realloc(set->items, (size_t)(set->n + 1) * sizeof *grown);
    if (!grown) return err_fail(err, err_len, "out of memory"), NULL;
    set->items = grown;
    pvq_layout *l = calloc(1, sizeof *l);
    if (!l) return err_fail(err, err_len, "out of memory"), NULL;
    if (pvq_codec_init(&l->codec, type_id, levels, n_levels, err, err_len)) {
        free(l);
        return NULL;
    }
    for (int isa = 0; isa < ISA_COUNT; isa++) pvq_select_kernels(&l->codec, (isa_id)isa, &l->k[isa]);
    set->items[set->n++] = l;
    return l;
}

void pvq_layouts_free(pvq_layouts *set) {
    for (int i = 0; i < set->n; i++) {
        pvq_codec_free(&set->items[i]->codec);
        free(set->items[i]);
    }
    free(set->items);
    memset(set, 0, sizeof *set);
}

void pvq_weight_get_row(const weight *w, int64_t r, float *out) {
    const pvq_layout *l = w->pvq.layout;
    l->k[isa_active()].dequantize(&l->codec, w->data + (size_t)r * w->row_bytes, pvq_half_to_float(w->pvq.scales[r]),
                                  w->n_in, out);
}

/* Rows in the repacked layout, for decode without decoding. */
static int repack(pvq_weight *pw, const uint8_t *data, int64_t n, int64_t rows) {
    const pvq_layout *l = pw->layout;
    size_t rb = pvq_row_bytes(&l->codec, n);
    pw->repacked_row_bytes = pvq_repacked_row_bytes(n);
    if (!(pw->repacked = malloc(pw->repacked_row_bytes * (size_t)rows))) return -1;
    for (int64_t r = 0; r < rows; r++)
        l->k[isa_active()].repack(&l->codec, data + (size_t)r * rb, pvq_half_to_float(pw->scales[r]), n,
                    pw->repacked + (size_t)r * pw->repacked_row_bytes);
    return 0;
}

void pvq_weight_free(pvq_weight *pw) {
    free(pw->repacked);
    memset(pw, 0, sizeof *pw);
}

int pvq_weight_load(pvq_weight *pw, pvq_layouts *set, const gguf_file *f, const gguf_tensor *t, pvq_mode mode,
                    char *err, size_t err_len) {
    memset(pw, 0, sizeof *pw);
    char name[256], key[300], why[200];
    snprintf(name, sizeof name, "%.*s", (int)(t->name.len < 200 ? t->name.len : 200), t->name.ptr);
    uint32_t version = 0;
    if (gguf_get_u32(f, "pvq.version", &version) || version != PVQ_FORMAT_VERSION)
        return err_fail(err, err_len, version == 1 ? "%s is PVQ of pvq.version 1, an enumeration this runtime no longer "
                                                     "reads: convert the model again (pvq.version %d)"
                                                   : "%s is PVQ but pvq.version is missing or not %d", name, PVQ_FORMAT_VERSION);
    int64_t n = t->ne[0], rows = t->ne[1];

    snprintf(key, sizeof key, "%s.pvq_scale", name);
    const gguf_tensor *st = gguf_find_tensor(f, key);
    if (!st) return err_fail(err, err_len, "PVQ tensor %s has no row scales (tensor %s)", name, key);
    if (st->type != T_F16 || st->ne[0] != rows || st->ne[1] * st->ne[2] * st->ne[3] != 1)
        return err_fail(err, err_len, "%s must be F16 with %lld values (one per row of %s)", key, (long long)rows, name);

    snprintf(key, sizeof key, "pvq.gain_levels.%s", name);
    const gguf_kv *kv = gguf_find_kv(f, key);
    int D, K, b;
    if (pvq_type_params(t->type, &D, &K, &b, why, sizeof why)) return err_fail(err, err_len, "%s: %s", name, why);
    if (!kv) return err_fail(err, err_len, "PVQ tensor %s has no gain levels (metadata %s)", name, key);
    if (kv->type != GGUF_ARRAY || kv->elem_type != GGUF_F32 || kv->n != (1u << b))
        return err_fail(err, err_len, "%s must be an array of %d float32 (gain bits %d)", key, 1 << b, b);
    float levels[1 << PVQ_MAX_GAIN_BITS];
    memcpy(levels, kv->data, kv->n * sizeof(float)); /* the mapping does not align array values */

    const pvq_layout *l = layout_for(set, t->type, levels, kv->n, why, sizeof why);
    if (!l) return err_fail(err, err_len, "%s: %s", name, why);
    if (pvq_validate_tensor(&l->codec, t->data, t->nbytes, n, rows, st->data, why, sizeof why))
        return err_fail(err, err_len, "%s: %s", name, why);
    pw->layout = l;
    pw->scales = st->data;
    pw->f32_activations = mode == PVQ_MODE_F32;
    if (mode == PVQ_MODE_REPACKED && l->k[ISA_SCALAR].repack && repack(pw, t->data, n, rows))
        return err_fail(err, err_len, "out of memory repacking %s", name);
    return 0;
}

size_t pvq_xq_bytes(int64_t n) {
    size_t steps = (size_t)(n + 127) / 128;
    return steps * 128 + steps * sizeof(float);
}

/* The step scales that pvq_quantize_x writes after the int8 values. */
static const float *xq_scales(const void *xq, int64_t n) {
    return (const float *)((const uint8_t *)xq + (size_t)(n + 127) / 128 * 128);
}

void pvq_quantize_x(const float *x, int64_t n, void *xq) {
    isa_kernels_active()->pvq_quantize_x_q8(x, n, xq, (float *)xq_scales(xq, n));
}

size_t pvq_weight_xq_bytes(uint32_t id, int64_t n) {
    (void)id; /* every layout reads the same int8 activations */
    return pvq_xq_bytes(n);
}

void pvq_weight_quantize_x(const weight *w, const float *x, void *xq) {
    if (!w->pvq.f32_activations) pvq_quantize_x(x, w->n_in, xq); /* else the products read x itself */
}

size_t pvq_tile_bytes(int64_t n) {
    size_t f32 = (size_t)n * sizeof(float), repacked = pvq_repacked_row_bytes(n);
    return PVQ_TILE_ROWS * (f32 > repacked ? f32 : repacked);
}

void pvq_matvec_rows(const pvq_weight *pw, const uint8_t *data, size_t row_bytes, int64_t n, int64_t r0, int64_t r1,
                     const float *x, const void *xq, float *y) {
    const pvq_kernels *k = &pw->layout->k[isa_active()];
    const pvq_codec *c = &pw->layout->codec;
    if (r1 <= r0) return;
    if (pw->f32_activations || !k->matvec_q8) { /* asked for, or no integer kernel (D != 8) */
        for (int64_t r = r0; r < r1; r++)
            y[r] = k->dot(c, data + (size_t)r * row_bytes, pvq_half_to_float(pw->scales[r]), n, x);
        return;
    }
    if (pw->repacked) {
        for (int64_t r = r0; r < r1; r++)
            y[r] = k->dot_repacked(pw->repacked + (size_t)r * pw->repacked_row_bytes, n, xq, xq_scales(xq, n));
        return;
    }
    k->matvec_q8(c, data + (size_t)r0 * row_bytes, pw->scales + r0, r1 - r0, n, xq, xq_scales(xq, n), y + r0);
}

/* Float32 activations (asked for, or a layout without the int8 fast path): the tile decoded to float32,
 * 2 x 4 f32 tiles. */
static void matmul_rows_f32(const pvq_weight *pw, const uint8_t *data, size_t row_bytes, int64_t n, int64_t r0,
                            int64_t r1, const float *x, int T, float *out, int64_t out_stride, float *tile) {
    const isa_id isa = isa_active();
    const pvq_kernels *k = &pw->layout->k[isa];
    const dot_fn dot_f32 = type_get(T_F32)->dot_batch[isa];
    const tile_fn tile_f32 = isa_kernels_of(isa)->tile_f32;
    for (int64_t r = r0; r < r1; r += PVQ_TILE_ROWS) {
        int64_t nr = r1 - r < PVQ_TILE_ROWS ? r1 - r : PVQ_TILE_ROWS;
        for (int64_t i = 0; i < nr; i++)
            k->dequantize(&pw->layout->codec, data + (size_t)(r + i) * row_bytes, pvq_half_to_float(pw->scales[r + i]), n,
                            tile + i * n);
        int t = 0;
        size_t row = (size_t)n * sizeof(float);
        for (; t + TILE_COLS <= T; t += TILE_COLS) /* 2 rows x 4 tokens per call; an odd last row goes below */
            for (int64_t i = 0; i + TILE_ROWS <= nr; i += TILE_ROWS)
                tile_f32(n, tile + i * n, row, x + (int64_t)t * n, row, &out[t * out_stride + r + i], (size_t)out_stride);
        for (int64_t i = 0; i < nr; i++)
            for (int u = i < nr / TILE_ROWS * TILE_ROWS ? t : 0; u < T; u++)
                dot_f32(n, tile + i * n, x + (int64_t)u * n, &out[u * out_stride + r + i]);
    }
}

void pvq_matmul_rows(const pvq_weight *pw, const uint8_t *data, size_t row_bytes, int64_t n, int64_t r0, int64_t r1,
                     const float *x, const void *xq, size_t xq_stride, int T, float *out, int64_t out_stride,
                     void *tile) {
    const pvq_kernels *k = &pw->layout->k[isa_active()];
    const pvq_codec *c = &pw->layout->codec;
    if (pw->f32_activations || !k->tile_repacked) {
        matmul_rows_f32(pw, data, row_bytes, n, r0, r1, x, T, out, out_stride, tile);
        return;
    }
    const size_t prb = pvq_repacked_row_bytes(n);
    const int8_t *xv = xq;
    const float *xs = xq_scales(xq, n);
    for (int64_t r = r0; r < r1; r += PVQ_TILE_ROWS) {
        int64_t nr = r1 - r < PVQ_TILE_ROWS ? r1 - r : PVQ_TILE_ROWS;
        const uint8_t *rows = pw->repacked ? pw->repacked + (size_t)r * prb : tile;
        if (!pw->repacked)
            for (int64_t i = 0; i < nr; i++)
                k->repack(c, data + (size_t)(r + i) * row_bytes, pvq_half_to_float(pw->scales[r + i]), n,
                            (uint8_t *)tile + (size_t)i * prb);
        int t = 0;
        int64_t whole = nr / PVQ_TILE_R * PVQ_TILE_R;
        for (; t + PVQ_TILE_T <= T; t += PVQ_TILE_T)
            for (int64_t i = 0; i < whole; i += PVQ_TILE_R)
                k->tile_repacked(rows + (size_t)i * prb, prb, n, (const int8_t *)((const uint8_t *)xv + t * xq_stride),
                                   (const float *)((const uint8_t *)xs + t * xq_stride), xq_stride,
                                   &out[t * out_stride + r + i], (size_t)out_stride);
        for (int64_t i = 0; i < nr; i++) /* the tokens past the last whole tile, and an odd last row */
            for (int u = i < whole ? t : 0; u < T; u++)
                out[u * out_stride + r + i] = k->dot_repacked(
                    rows + (size_t)i * prb, n, (const int8_t *)((const uint8_t *)xv + u * xq_stride),
                    (const float *)((const uint8_t *)xs + u * xq_stride));
    }
}

void pvq_weight_rows(const weight *w, int64_t r0, int64_t r1, int T, const float *x, const void *xq, size_t xq_stride,
                     float *out, int64_t out_stride, void *scratch) {
    if (T == 1)
        pvq_matvec_rows(&w->pvq, w->data, w->row_bytes, w->n_in, r0, r1, x, xq, out);
    else
        pvq_matmul_rows(&w->pvq, w->data, w->row_bytes, w->n_in, r0, r1, x, xq, xq_stride, T, out, out_stride,
                        scratch);
}
