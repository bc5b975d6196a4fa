/* tokenizer.ggml.* -> tok_vocab_desc, with llama.cpp's defaults for absent keys (see tokenizer.h). */
#include "vocab.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int str_is(gguf_str s, const char *z) { return strlen(z) == s.len && !memcmp(s.ptr, z, s.len); }

static int id_or(const gguf_file *f, const char *key, int32_t dflt, int32_t n) {
    int32_t v;
    if (gguf_get_i32(f, key, &v)) v = dflt;
    return v >= 0 && v < n ? v : -1;
}

static int bool_or(const gguf_file *f, const char *key, int dflt) {
    int v;
    return gguf_get_bool(f, key, &v) ? dflt : v;
}

/* A string array as tok_str (same layout intent, different struct): filled into a fresh array. */
static tok_str *strings(const gguf_kv *kv) {
    gguf_str *g = malloc((kv->n ? kv->n : 1) * sizeof *g);
    tok_str *t = malloc((kv->n ? kv->n : 1) * sizeof *t);
    if (g && t) {
        gguf_str_array(kv, g);
        for (uint64_t i = 0; i < kv->n; i++) t[i] = (tok_str){g[i].ptr, (size_t)g[i].len};
    }
    free(g);
    if (!g) {
        free(t);
        return NULL;
    }
    return t;
}

tokenizer *vocab_load(const gguf_file *f, int n_vocab, char *err, size_t err_len) {
    tok_vocab_desc d;
    memset(&d, 0, sizeof d);
    gguf_str kind, pre = {"default", 7};
    if (gguf_get_str(f, "tokenizer.ggml.model", &kind)) {
        snprintf(err, err_len, "no tokenizer.ggml.model in the file");
        return NULL;
    }
    if (str_is(kind, "llama"))
        d.kind = TOK_SPM;
    else if (str_is(kind, "gpt2"))
        d.kind = TOK_BPE;
    else {
        snprintf(err, err_len, "unsupported tokenizer '%.*s' (llama and gpt2 are supported)",
                 (int)(kind.len < 64 ? kind.len : 64), kind.ptr);
        return NULL;
    }
    if (d.kind == TOK_BPE) {
        gguf_get_str(f, "tokenizer.ggml.pre", &pre);
        static const struct { const char *name; enum tok_pre pre; } PRE[] = {
            {"default", TOK_PRE_DEFAULT}, {"gpt-2", TOK_PRE_GPT2},   {"llama-bpe", TOK_PRE_LLAMA_BPE},
            {"llama3", TOK_PRE_LLAMA_BPE}, {"llama-v3", TOK_PRE_LLAMA_BPE}, {"smollm", TOK_PRE_SMOLLM},
            {"qwen2", TOK_PRE_QWEN2},
        };
        size_t i = 0;
        while (i < sizeof PRE / sizeof PRE[0] && !str_is(pre, PRE[i].name)) i++;
        if (i == sizeof PRE / sizeof PRE[0]) {
            snprintf(err, err_len, "unsupported pre-tokenizer '%.*s'", (int)(pre.len < 64 ? pre.len : 64), pre.ptr);
            return NULL;
        }
        d.pre = PRE[i].pre;
    }
    const gguf_kv *tokens = gguf_find_kv(f, "tokenizer.ggml.tokens");
    const gguf_kv *scores = gguf_find_kv(f, "tokenizer.ggml.scores");
    const gguf_kv *types = gguf_find_kv(f, "tokenizer.ggml.token_type");
    const gguf_kv *merges = gguf_find_kv(f, "tokenizer.ggml.merges");
    if (!tokens || tokens->type != GGUF_ARRAY || tokens->elem_type != GGUF_STRING || tokens->n != (uint64_t)n_vocab) {
        snprintf(err, err_len, "tokenizer.ggml.tokens must be an array of %d strings (one per embedding row)", n_vocab);
        return NULL;
    }
    if (scores && (scores->type != GGUF_ARRAY || scores->elem_type != GGUF_F32 || scores->n != tokens->n)) {
        snprintf(err, err_len, "tokenizer.ggml.scores must be %d float32 values", n_vocab);
        return NULL;
    }
    if (types && (types->type != GGUF_ARRAY || types->elem_type != GGUF_I32 || types->n != tokens->n)) {
        snprintf(err, err_len, "tokenizer.ggml.token_type must be %d int32 values", n_vocab);
        return NULL;
    }
    if (merges && (merges->type != GGUF_ARRAY || merges->elem_type != GGUF_STRING || merges->n > (1u << 24))) {
        snprintf(err, err_len, "tokenizer.ggml.merges must be an array of strings");
        return NULL;
    }
    int spm = d.kind == TOK_SPM;
    d.n_tokens = (uint32_t)n_vocab;
    d.tokens = strings(tokens);
    d.n_merges = merges && !spm ? (uint32_t)merges->n : 0;
    d.merges = d.n_merges ? strings(merges) : NULL;
    /* scalar arrays may be unaligned inside the mapping: copy them */
    float *sc = scores ? malloc(tokens->n * 4 + 4) : NULL;
    int32_t *ty = types ? malloc(tokens->n * 4 + 4) : NULL;
    if (sc) memcpy(sc, scores->data, tokens->n * 4);
    if (ty) memcpy(ty, types->data, tokens->n * 4);
    d.scores = sc, d.types = ty;
    d.bos_id = id_or(f, "tokenizer.ggml.bos_token_id", spm ? 1 : 11, n_vocab);
    d.eos_id = id_or(f, "tokenizer.ggml.eos_token_id", spm ? 2 : 11, n_vocab);
    d.unk_id = id_or(f, "tokenizer.ggml.unknown_token_id", spm ? 0 : -1, n_vocab);
    d.pad_id = id_or(f, "tokenizer.ggml.padding_token_id", -1, n_vocab);
    d.add_bos = bool_or(f, "tokenizer.ggml.add_bos_token", spm || d.pre == TOK_PRE_LLAMA_BPE);
    d.add_eos = bool_or(f, "tokenizer.ggml.add_eos_token", 0);
    d.add_space_prefix = bool_or(f, "tokenizer.ggml.add_space_prefix", spm);
    tokenizer *t = NULL;
    if (!d.tokens || (d.n_merges && !d.merges) || (scores && !sc) || (types && !ty))
        snprintf(err, err_len, "out of memory reading the vocabulary");
    else
        t = tokenizer_new(&d, err, err_len);
    free((void *)d.tokens), free((void *)d.merges), free(sc), free(ty);
    return t;
}
