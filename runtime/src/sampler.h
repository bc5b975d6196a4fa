/* Token sampling over one row of logits: repetition penalty, then greedy or top-k, top-p, min-p,
 * temperature and a seeded draw (llama.cpp's order). All buffers are allocated once. */
#ifndef PVQ_SAMPLER_H
#define PVQ_SAMPLER_H

#include "pvq.h"

struct pvq_sampler {
    pvq_sampler_params p;
    int32_t n_vocab;
    struct cand { int32_t id; float logit; float prob; } *cand;
    int32_t *recent; /* ring of the last repeat_last_n accepted tokens */
    int32_t n_recent, next_recent;
    uint64_t rng;
};

#endif
