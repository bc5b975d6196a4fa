#include "sampler.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

pvq_sampler_params pvq_sampler_default_params(void) {
    return (pvq_sampler_params){0.8f, 40, 0.95f, 0.05f, 1.0f, 64, 0};
}

pvq_status pvq_sampler_new(const pvq_sampler_params *p, int32_t n_vocab, pvq_sampler **out, char *err,
                           size_t err_len) {
    *out = NULL;
    if (n_vocab <= 0 || p->repeat_last_n < 0 || p->repeat_last_n > (1 << 20) || !(p->repeat_penalty > 0.0f) ||
        isnan(p->temp) || isnan(p->top_p) || isnan(p->min_p)) {
        if (err_len) snprintf(err, err_len, "bad sampler parameters");
        return PVQ_ERR_ARG;
    }
    pvq_sampler *s = calloc(1, sizeof *s);
    if (s) {
        s->cand = malloc((size_t)n_vocab * sizeof *s->cand);
        s->recent = malloc(((size_t)p->repeat_last_n + 1) * sizeof *s->recent);
    }
    if (!s || !s->cand || !s->recent) {
        pvq_sampler_free(s);
        if (err_len) snprintf(err, err_len, "out of memory");
        return PVQ_ERR_NOMEM;
    }
    s->p = *p;
    s->n_vocab = n_vocab;
    s->rng = p->seed ^ 0x9e3779b97f4a7c15ull;
    *out = s;
    return PVQ_OK;
}

void pvq_sampler_free(pvq_sampler *s) {
    if (!s) return;
    free(s->cand);
    free(s->recent);
    free(s);
}

void pvq_sampler_accept(pvq_sampler *s, int32_t token) {
    if (s->p.repeat_last_n == 0) return;
    s->recent[s->next_recent] = token;
    s->next_recent = (s->next_recent + 1) % s->p.repeat_last_n;
    if (s->n_recent < s->p.repeat_last_n) s->n_recent++;
}

/* splitmix64 -> uniform in [0, 1) */
static double uniform(pvq_sampler *s) {
    uint64_t z = (s->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (double)((z ^ (z >> 31)) >> 11) * 0x1p-53;
}

static int by_logit_desc(const void *a, const void *b) {
    const struct cand *x = a, *y = b;
    if (x->logit != y->logit) return x->logit < y->logit ? 1 : -1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Moves the k largest logits to the front (quickselect), unordered. */
static void select_top(struct cand *c, int32_t n, int32_t k) {
    int32_t lo = 0, hi = n - 1;
    while (lo < hi) {
        struct cand pivot = c[(lo + hi) / 2];
        int32_t i = lo, j = hi;
        while (i <= j) {
            while (by_logit_desc(&c[i], &pivot) < 0) i++;
            while (by_logit_desc(&c[j], &pivot) > 0) j--;
            if (i <= j) {
                struct cand t = c[i];
                c[i++] = c[j];
                c[j--] = t;
            }
        }
        if (k - 1 <= j)
            hi = j;
        else if (k - 1 >= i)
            lo = i;
        else
            break;
    }
}

/* Softmax of logits / temp over c[0..n) into prob. */
static void softmax(struct cand *c, int32_t n, float temp) {
    float mx = c[0].logit;
    for (int32_t i = 1; i < n; i++) mx = fmaxf(mx, c[i].logit);
    double sum = 0;
    for (int32_t i = 0; i < n; i++) sum += (c[i].prob = expf((c[i].logit - mx) / temp));
    for (int32_t i = 0; i < n; i++) c[i].prob = (float)(c[i].prob / sum);
}

int32_t pvq_sampler_sample(pvq_sampler *s, const float *logits) {
    struct cand *c = s->cand;
    int32_t n = s->n_vocab;
    for (int32_t i = 0; i < n; i++) c[i] = (struct cand){i, logits[i], 0.0f};
    if (s->p.repeat_penalty != 1.0f)
        for (int32_t r = 0; r < s->n_recent; r++) {
            int32_t id = s->recent[r];
            int seen = 0; /* penalise each distinct token once */
            for (int32_t q = 0; q < r; q++) seen |= s->recent[q] == id;
            if (seen || id < 0 || id >= n) continue;
            c[id].logit = c[id].logit > 0 ? c[id].logit / s->p.repeat_penalty : c[id].logit * s->p.repeat_penalty;
        }
    if (s->p.temp <= 0.0f) {
        int32_t best = 0;
        for (int32_t i = 1; i < n; i++)
            if (c[i].logit > c[best].logit) best = i;
        return c[best].id;
    }
    if (s->p.top_k > 0 && s->p.top_k < n) {
        select_top(c, n, s->p.top_k);
        n = s->p.top_k;
    }
    qsort(c, (size_t)n, sizeof *c, by_logit_desc);
    softmax(c, n, 1.0f);
    if (s->p.top_p < 1.0f) {
        double cum = 0;
        int32_t keep = 0;
        while (keep < n && cum < s->p.top_p) cum += c[keep++].prob;
        n = keep > 0 ? keep : 1;
    }
    if (s->p.min_p > 0.0f) {
        int32_t keep = 1;
        while (keep < n && c[keep].prob >= s->p.min_p * c[0].prob) keep++;
        n = keep;
    }
    softmax(c, n, s->p.temp);
    double u = uniform(s), cum = 0;
    for (int32_t i = 0; i < n; i++)
        if ((cum += c[i].prob) > u) return c[i].id;
    return c[n - 1].id;
}
