/* Builds the tokenizer from the tokenizer.ggml.* metadata of a GGUF file. */
#ifndef PVQ_VOCAB_H
#define PVQ_VOCAB_H

#include "gguf.h"
#include "tokenizer.h"

/* NULL with a message in err when the metadata is missing, malformed or names an unsupported
 * tokenizer. n_vocab: the model's embedding rows, which the token list must match. */
tokenizer *vocab_load(const gguf_file *f, int n_vocab, char *err, size_t err_len);

#endif
