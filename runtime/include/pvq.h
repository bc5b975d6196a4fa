/* pvq runtime: the C API (used by pvqrun and the Python bindings).
 *
 * Errors: functions that can fail return a pvq_status and write a NUL-terminated message to the
 * caller's err buffer (err may be NULL when err_len is 0). The library never exits or aborts.
 * Threads: a model is read-only after loading and may be shared; a context belongs to one thread. */
#ifndef PVQ_H
#define PVQ_H

#include <stddef.h>
#include <stdint.h>

/* The library exports these functions and nothing else (it is built with hidden visibility). */
#if defined(__GNUC__)
#define PVQ_API __attribute__((visibility("default")))
#else
#define PVQ_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    PVQ_OK = 0,
    PVQ_ERR_IO = 1,          /* cannot open or map the file */
    PVQ_ERR_FORMAT = 2,      /* malformed or unsupported file */
    PVQ_ERR_NOMEM = 3,
    PVQ_ERR_ARG = 4,         /* bad argument (token id out of range, zero sizes, ...) */
    PVQ_ERR_CONTEXT_FULL = 5,/* more tokens than the context holds */
    PVQ_ERR_UTF8 = 6,        /* text is not valid UTF-8 */
    PVQ_ERR_TOO_LONG = 7,    /* text or token list too long for the buffer given */
    PVQ_ERR_DEVICE = 8,      /* the GPU failed: upload (device memory), a kernel, an unsupported weight type */
} pvq_status;

typedef struct pvq_model pvq_model;
typedef struct pvq_context pvq_context;
typedef struct pvq_sampler pvq_sampler;

/* ---- kernel sets */
/* The kernel set in use: "scalar", "avx2" or "avx512" (docs/runtime.md, "Kernel sets"): the best this CPU
 * runs, unless the environment variable PVQ_ISA or pvq_set_isa chose another. */
PVQ_API const char *pvq_isa(void);
/* Forces a kernel set for the whole process (NULL or "auto": the best), loaded models included; not while
 * another thread evaluates. PVQ_ERR_ARG for an unknown name or a set this CPU lacks. */
PVQ_API pvq_status pvq_set_isa(const char *name, char *err, size_t err_len);

/* ---- model */
PVQ_API pvq_status pvq_model_load(const char *path, pvq_model **out, char *err, size_t err_len);
typedef struct {
    int pvq_repack; /* also hold PVQ weights (D = 8) as int8 points + float group scales for decode: faster,
                     * 1.5 bytes per weight of RAM besides the file's mapping (0.41 at 3.25 bits) */
    int pvq_f32_activations; /* PVQ products read float32 activations instead of int8 ones: slower, and the
                              * same arithmetic as the converter's torch model up to float rounding. Not
                              * with pvq_repack (PVQ_ERR_ARG). */
} pvq_model_params;
PVQ_API pvq_model_params pvq_model_default_params(void);
PVQ_API pvq_status pvq_model_load_params(const char *path, const pvq_model_params *params, pvq_model **out, char *err,
                                         size_t err_len);
PVQ_API void pvq_model_free(pvq_model *m);
PVQ_API int32_t pvq_n_vocab(const pvq_model *m);
PVQ_API int32_t pvq_n_ctx_train(const pvq_model *m);
PVQ_API int32_t pvq_n_embd(const pvq_model *m);
PVQ_API int32_t pvq_n_layer(const pvq_model *m);
/* Writes a one-line description (architecture, sizes, weight types, SIMD kernels). */
PVQ_API void pvq_model_describe(const pvq_model *m, char *buf, size_t len);

/* ---- tokens */
PVQ_API int32_t pvq_token_bos(const pvq_model *m);
PVQ_API int32_t pvq_token_eos(const pvq_model *m);
PVQ_API int pvq_token_is_eog(const pvq_model *m, int32_t id);
PVQ_API int pvq_adds_bos(const pvq_model *m);
/* Tokenizes UTF-8 text. add_special: BOS/EOS as the vocabulary asks; parse_special: recognise control
 * tokens' texts. On success *n_out tokens were written; when max_tokens is too small the status is
 * PVQ_ERR_TOO_LONG and *n_out is the count needed. */
PVQ_API pvq_status pvq_tokenize(const pvq_model *m, const char *text, size_t len, int add_special, int parse_special,
                                int32_t *out, int32_t max_tokens, int32_t *n_out, char *err, size_t err_len);
/* Bytes of one token (may be part of a UTF-8 character). Returns the byte count, or -(needed) when
 * buf_len is too small, or INT32_MIN for a bad id. special: render control tokens' text. */
PVQ_API int32_t pvq_token_to_piece(const pvq_model *m, int32_t id, char *buf, int32_t buf_len, int special);
/* Streaming: how many trailing bytes of buf (0..3) start an incomplete UTF-8 character. */
PVQ_API size_t pvq_utf8_incomplete(const char *buf, size_t len);
/* Streaming text that is always valid UTF-8: copies in[0..len) to out with each maximal invalid subpart
 * replaced by U+FFFD (Python's decode(errors="replace")). A still-valid incomplete character at the end is
 * not read (pass it again with the next bytes) unless final, which turns it into one U+FFFD. out needs
 * 3 * len bytes. Returns the bytes read (len minus 0..3); *out_len gets the bytes written. */
PVQ_API size_t pvq_utf8_repair(const char *in, size_t len, int final, char *out, size_t *out_len);

/* IEEE half precision, round to nearest even (pvqrun stores base log-probabilities with it). */
PVQ_API uint16_t pvq_f32_to_f16(float f);
PVQ_API float pvq_f16_to_f32(uint16_t h);

/* ---- context: KV cache, scratch, threads */
typedef struct {
    int32_t n_ctx;      /* tokens the KV cache holds; 0: the model's training context, capped at 4096 */
    int32_t n_batch;    /* tokens per forward pass (prompts are split); 0: 512 */
    int32_t n_threads;  /* 0: the number of online CPUs */
    int32_t logits_all; /* keep logits of every token of an eval, not just the last */
    int32_t n_gpu_layers; /* 0: the CPU. -1 or >= pvq_n_layer: the whole model (weights and KV cache) on the
                           * GPU, through the CUDA backend libpvq_cuda.so (docs/cuda.md); without that library
                           * or a usable device, one warning on stderr and the CPU. Other values: PVQ_ERR_ARG
                           * (partial offload is not supported) */
} pvq_context_params;

PVQ_API pvq_context_params pvq_context_default_params(void);
PVQ_API pvq_status pvq_context_new(const pvq_model *m, const pvq_context_params *p, pvq_context **out, char *err,
                                   size_t err_len);
PVQ_API void pvq_context_free(pvq_context *c);
PVQ_API int32_t pvq_n_ctx(const pvq_context *c);
PVQ_API int32_t pvq_n_past(const pvq_context *c);
/* Forget the cache from position n_keep on (0 clears it). */
PVQ_API void pvq_kv_truncate(pvq_context *c, int32_t n_keep);
/* Appends n tokens after the cached ones and runs the model on them. */
PVQ_API pvq_status pvq_eval(pvq_context *c, const int32_t *tokens, int32_t n, char *err, size_t err_len);
/* Logits (n_vocab floats) of the i-th token of the last eval; i = -1 is its last token. With
 * logits_all off only the last is available. NULL when i is out of range. */
PVQ_API const float *pvq_logits(const pvq_context *c, int32_t i);

/* ---- sampling */
typedef struct {
    float temp;           /* <= 0: greedy */
    int32_t top_k;        /* <= 0: off */
    float top_p;          /* >= 1: off */
    float min_p;          /* <= 0: off */
    float repeat_penalty; /* 1: off */
    int32_t repeat_last_n;/* tokens the penalty looks back over */
    uint64_t seed;
} pvq_sampler_params;

PVQ_API pvq_sampler_params pvq_sampler_default_params(void);
PVQ_API pvq_status pvq_sampler_new(const pvq_sampler_params *p, int32_t n_vocab, pvq_sampler **out, char *err,
                                   size_t err_len);
PVQ_API void pvq_sampler_free(pvq_sampler *s);
/* Records a token (prompt or generated) for the repetition penalty. */
PVQ_API void pvq_sampler_accept(pvq_sampler *s, int32_t token);
PVQ_API int32_t pvq_sampler_sample(pvq_sampler *s, const float *logits);

#ifdef __cplusplus
}
#endif
#endif
