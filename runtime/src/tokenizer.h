/* Tokenizers built from GGUF vocabulary metadata: SentencePiece-style (`llama`) and byte-level BPE
 * (`gpt2`), matching llama.cpp's tokenization. The tokenizer copies what it needs out of the
 * description, so the caller may free or unmap the arrays afterwards. A tokenizer is read-only after
 * tokenizer_new: several threads may encode and decode with it at once.
 *
 * Filling the description from GGUF (as llama.cpp reads the same keys):
 *   kind      tokenizer.ggml.model: "llama" -> TOK_SPM, "gpt2" -> TOK_BPE
 *   pre       tokenizer.ggml.pre (BPE only): "gpt-2" -> GPT2; "llama-bpe", "llama3", "llama-v3" ->
 *             LLAMA_BPE; "smollm" -> SMOLLM; "qwen2" -> QWEN2; "default" or missing -> DEFAULT;
 *             any other name: not supported, refuse the model with a message naming it
 *   tokens, scores (absent in BPE files: NULL), types (tokenizer.ggml.token_type), merges
 *   bos/eos/unk/pad tokenizer.ggml.{bos,eos,unknown,padding}_token_id; when a key is absent llama.cpp
 *             uses bos 1, eos 2, unk 0 for SPM and bos = eos = 11 for BPE (if inside the vocabulary),
 *             else -1; pad -1
 *   add_bos   tokenizer.ggml.add_bos_token, default 1 for SPM and for pre LLAMA_BPE, else 0
 *   add_eos   tokenizer.ggml.add_eos_token, default 0
 *   add_space_prefix tokenizer.ggml.add_space_prefix, default 1 for SPM, 0 for BPE
 */
/* Where it differs from llama.cpp, on purpose:
 *   - invalid UTF-8 is an error (TOK_ERR_UTF8), where llama.cpp silently reads it as U+FFFD;
 *   - an SPM character with neither a token nor <0xNN> byte tokens becomes unk_id (llama.cpp throws);
 *   - code point categories come from Unicode 14 (Python 3.11's unicodedata; llama.cpp has 15.1):
 *     ~5000 letters/digits assigned since (CJK extensions H and I, some scripts) split differently;
 *   - per-model lstrip/rstrip of special tokens (phi-3, modern-bert) is not applied;
 *   - BPE merges whose halves or result are not tokens are ignored.
 * tests/test_tokenizer.py checks the rest against llama-cpp-python and sentencepiece. */
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

/* Returns NULL and writes a message to err on an inconsistent description (or out of memory). */
tokenizer *tokenizer_new(const tok_vocab_desc *desc, char *err, size_t err_len);
void tokenizer_free(tokenizer *t);

/* Error codes of tokenizer_encode and tokenizer_piece; all below any -(needed) they return. */
#define TOK_ERR_UTF8     (-2147483647 - 1) /* the input is not valid UTF-8 */
#define TOK_ERR_NOMEM    (-2147483647)     /* out of memory */
#define TOK_ERR_TOO_LONG (-2147483646)     /* input longer than TOK_MAX_INPUT bytes */
#define TOK_ERR_ID       (-2147483645)     /* token id outside the vocabulary */
#define TOK_MAX_INPUT    ((size_t)1 << 24) /* 16 MiB: encoding takes up to ~80 bytes per input byte */

/* Tokenizes text (UTF-8, len bytes; strictly validated: overlong forms, surrogates and truncated
 * sequences are TOK_ERR_UTF8). add_special: add BOS/EOS as the vocab asks. parse_special: recognise
 * the texts of control and unknown tokens in the input (user-defined tokens are always recognised,
 * as in llama.cpp). Returns the number of tokens written to out; when max_tokens is too small it
 * writes the first max_tokens and returns -(needed); or one of the TOK_ERR_* codes. */
int32_t tokenizer_encode(const tokenizer *t, const char *text, size_t len, int add_special,
                         int parse_special, int32_t *out, int32_t max_tokens);

/* Writes the bytes of one token (no NUL): BPE tokens byte-decoded, SPM "▁" as spaces and <0xNN> as
 * the raw byte; a piece can be part of a UTF-8 character. special: render control and unknown tokens'
 * text (otherwise they give nothing). Returns the byte count, -(needed) when buf_len is too small
 * (nothing written), or TOK_ERR_ID. */
int32_t tokenizer_piece(const tokenizer *t, int32_t id, char *buf, int32_t buf_len, int special);

/* For streaming output: how many bytes at the end of buf (0..3) begin a UTF-8 character that is not
 * complete yet. Print len minus that, keep the rest for the next piece. */
size_t tokenizer_utf8_incomplete(const char *buf, size_t len);

uint32_t tokenizer_n_tokens(const tokenizer *t);
int32_t tokenizer_bos(const tokenizer *t);
int32_t tokenizer_eos(const tokenizer *t);
/* Whether encoding with add_special puts BOS in front (perplexity starts every chunk with it then). */
int tokenizer_adds_bos(const tokenizer *t);
/* End of generation: EOS and the end-of-turn tokens llama.cpp recognises by text (<|im_end|>,
 * <|eot_id|>, <|endoftext|>, ...). */
int tokenizer_is_eog(const tokenizer *t, int32_t id);
/* The token's text as stored in the vocabulary (not NUL-terminated), or NULL for a bad id. */
const char *tokenizer_token_text(const tokenizer *t, int32_t id, size_t *len);
/* enum tok_type of the token after loading (end-of-turn tokens count as CONTROL), or -1. */
int tokenizer_token_type(const tokenizer *t, int32_t id);

#endif
