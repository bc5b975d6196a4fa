/* Tokenizers built from GGUF vocabulary metadata: SentencePiece-style (`llama`) and byte-level BPE
 * (`gpt2`). The tokenizer copies what it needs out of the description, so the caller may free or
 * unmap the arrays afterwards. */
#ifndef PVQ_TOKENIZER_H
#define PVQ_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

enum tok_kind { TOK_SPM, TOK_BPE };

/* Pre-tokenizers for TOK_BPE, named as tokenizer.ggml.pre names them. */
enum tok_pre { TOK_PRE_DEFAULT, TOK_PRE_GPT2, TOK_PRE_LLAMA_BPE, TOK_PRE_SMOLLM, TOK_PRE_QWEN2 };

/* Token types, numbered as tokenizer.ggml.token_type stores them. */
enum tok_type {
    TOK_TYPE_UNDEFINED = 0, TOK_TYPE_NORMAL = 1, TOK_TYPE_UNKNOWN = 2, TOK_TYPE_CONTROL = 3,
    TOK_TYPE_USER_DEFINED = 4, TOK_TYPE_UNUSED = 5, TOK_TYPE_BYTE = 6,
};

typedef struct {
    const char *ptr; /* not NUL-terminated */
    size_t len;
} tok_str;

typedef struct {
    enum tok_kind kind;
    enum tok_pre pre;
    uint32_t n_tokens;
    const tok_str *tokens;     /* n_tokens */
    const float *scores;       /* n_tokens, may be NULL (BPE) */
    const int32_t *types;      /* n_tokens, may be NULL (all NORMAL) */
    uint32_t n_merges;
    const tok_str *merges;     /* "left right", BPE only */
    int32_t bos_id, eos_id, unk_id, pad_id; /* -1 when absent */
    int add_bos, add_eos, add_space_prefix;
} tok_vocab_desc;

typedef struct tokenizer tokenizer;

/* Returns NULL and writes a message to err on an inconsistent description. */
tokenizer *tokenizer_new(const tok_vocab_desc *desc, char *err, size_t err_len);
void tokenizer_free(tokenizer *t);

/* Tokenizes text (UTF-8, len bytes). add_special: add BOS/EOS as the vocab asks; parse_special:
 * recognise control/user-defined token texts in the input. Returns the number of tokens, or
 * -(needed) when max_tokens is too small, or TOK_ERR_UTF8 on invalid UTF-8. */
#define TOK_ERR_UTF8 (-2147483647 - 1)
int32_t tokenizer_encode(const tokenizer *t, const char *text, size_t len, int add_special,
                         int parse_special, int32_t *out, int32_t max_tokens);

/* Writes the bytes of one token (no NUL). special: render control tokens' text (otherwise they
 * give nothing). Returns the byte count, or -(needed) when buf_len is too small, or -1... for a bad id
 * (see tokenizer.c). */
int32_t tokenizer_piece(const tokenizer *t, int32_t id, char *buf, int32_t buf_len, int special);

uint32_t tokenizer_n_tokens(const tokenizer *t);
int32_t tokenizer_bos(const tokenizer *t);
int32_t tokenizer_eos(const tokenizer *t);
int tokenizer_is_eog(const tokenizer *t, int32_t id);

#endif
