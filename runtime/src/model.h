/* Llama and Qwen2 weights (pointing into the GGUF mapping) and the forward pass. */
#ifndef PVQ_MODEL_H
#define PVQ_MODEL_H

#include "gguf.h"
#include "hadamard.h"
#include "pvq_matmul.h"
#include "threadpool.h"
#include "types.h"

#include <stddef.h>
#include <stdint.h>

/* What differs between architectures: one row of ARCHES (model.c) each; a new architecture is a new row. */
typedef struct arch_traits {
    const char *name;             /* general.architecture, and the prefix of its hyper-parameter keys */
    int rope_neox;                /* rotate pairs (i, i + rope_dim/2) instead of (2i, 2i+1) */
    int qkv_bias;                 /* attn_q/k/v.bias are required (else optional) */
    const char *const *block_tensors; /* blk.N.<name> of each block's tensors, in BLOCK_* order */
} arch_traits;

enum { BLOCK_ATTN_NORM, BLOCK_FFN_NORM, BLOCK_BQ, BLOCK_BK, BLOCK_BV, BLOCK_WQ, BLOCK_WK, BLOCK_WV, BLOCK_WO,
       BLOCK_GATE, BLOCK_UP, BLOCK_DOWN, BLOCK_TENSORS };

typedef struct weight {
    const uint8_t *data; /* n_out rows of row_bytes, inside the mapping */
    uint32_t type;
    int64_t n_in, n_out;
    size_t row_bytes;
    pvq_weight pvq;      /* codec and row scales of a PVQ weight (pvq.layout NULL otherwise) */
} weight;

typedef struct {
    float *attn_norm, *ffn_norm;  /* owned copies as f32 (small) */
    float *bq, *bk, *bv;          /* with arch->qkv_bias (or when the file has them), else NULL */
    weight wq, wk, wv, wo, w_gate, w_up, w_down;
} layer;

typedef struct {
    const arch_traits *arch;
    int n_layer, dim, n_head, n_head_kv, head_dim, ffn_dim, n_vocab, n_ctx_train, rope_dim;
    float rms_eps, rope_base;
    weight tok_embd, output;  /* output may be tok_embd (tied) */
    weight output_mix;        /* [dim][dim] applied to the normed state before output, or data NULL (docs/rotation.md) */
    float *out_norm;
    layer *layers;
    pvq_layouts pvq_layouts;     /* the codecs the PVQ weights share */
    pvq_mode pvq_mode;           /* how PVQ products run (pvq_matmul.h) */
    hadamard_plan ffn_hadamard;  /* applied to down_proj's input when .base is set (pvq.rotation.ffn_hadamard) */
    gguf_file file;
} model;

/* Everything a forward pass writes: KV cache and scratch, allocated once per context. */
typedef struct {
    int n_ctx, n_batch, logits_all, n_past;
    uint16_t *k_cache, *v_cache; /* [layer][pos][n_head_kv * head_dim], fp16 as in llama.cpp */
    float *x, *xb, *xb2, *q, *k, *v, *hb, *hb2; /* [n_batch][...] */
    float *rope;                 /* [n_batch][rope_dim/2][cos, sin] */
    void *xq;                    /* [n_batch] activations as a weight's quantize_x writes them */
    float *att;                  /* [n_threads][n_ctx] scores */
    uint16_t *att16;             /* [n_threads][n_ctx + head_dim] probabilities and query as fp16 */
    float *lanes;                /* [n_threads][64][head_dim] partial sums of probabilities . V */
    float *logits;               /* [logits_all ? n_batch : 1][n_vocab] */
    uint8_t *scratch;            /* [n_threads][scratch_bytes] the products' own (PVQ: rows decoded for a batch) */
    size_t scratch_bytes;        /* type_max_scratch_bytes() of the widest n_in */
    int n_logits;                /* rows of logits written by the last forward */
    threadpool *pool;
} state;

/* pvq_mode: int8 activations from the PVQ fields or from rows repacked at load, or float32 activations. */
int model_load(model *m, const char *path, pvq_mode pvq_mode, char *err, size_t err_len);
void model_free(model *m);

int state_new(state *s, const model *m, int n_ctx, int n_batch, int n_threads, int logits_all, char *err,
              size_t err_len);
void state_free(state *s);

/* Runs n (<= n_batch) tokens at positions n_past.., appending to the KV cache. The caller checks
 * that ids are in the vocabulary and n_past + n <= n_ctx. */
void forward(const model *m, state *s, const int32_t *tokens, int n);

#endif
