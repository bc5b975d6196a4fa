/* pvqrun: generate text, print token ids, or score a text (perplexity, KL divergence against saved
 * base log-probabilities) with a GGUF model. Flags follow llama-cli and llama-perplexity. */
#include "pvq.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const char *model, *prompt, *file, *kld_base, *isa;
    int n_predict, n_threads, n_ctx, n_batch, n_gpu_layers, print_ids, perplexity, kld, chunks, verbose, pvq_repack, pvq_f32_act;
    pvq_sampler_params sp;
} options;

static void usage(FILE *o) {
    fprintf(o,
            "usage: pvqrun -m MODEL.gguf [options]\n"
            "  -m, --model FILE          GGUF model (llama or qwen2; F32/F16/BF16/Q8_0)\n"
            "  -p, --prompt TEXT         prompt\n"
            "  -f, --file FILE           read the prompt (or the text to score) from FILE\n"
            "  -n, --n-predict N         tokens to generate (default 128; -1: until end of text or context)\n"
            "  -t, --threads N           threads (default: number of CPUs)\n"
            "  -c, --ctx-size N          context size (default: the model's, at most 4096)\n"
            "  -b, --batch-size N        tokens per forward pass (default 512)\n"
            "  -ngl, --n-gpu-layers N    layers on the GPU (default 0: the CPU); -1 or >= the layer count: the\n"
            "                            whole model, through build-cuda/libpvq_cuda.so (make cuda); without it\n"
            "                            or a usable GPU, a warning and the CPU. Partial offload: refused\n"
            "  --temp T                  temperature (default 0.8; 0: greedy)\n"
            "  --top-k N                 (default 40; 0: off)\n"
            "  --top-p P                 (default 0.95; 1: off)\n"
            "  --min-p P                 (default 0.05; 0: off)\n"
            "  --repeat-penalty R        (default 1.0: off)\n"
            "  --repeat-last-n N         tokens the penalty looks back over (default 64)\n"
            "  -s, --seed N              sampling seed (default: from the clock); same seed, same text\n"
            "  --print-token-ids         print the prompt's and the generated token ids instead of text\n"
            "  --perplexity              perplexity of the text (-f/-p) in chunks of -c tokens, second halves\n"
            "  --chunks N                score at most N chunks\n"
            "  --kl-divergence-base FILE with --perplexity: save the log-probabilities to FILE;\n"
            "                            with --kl-divergence: compare against FILE\n"
            "  --kl-divergence           KL divergence from the base saved in --kl-divergence-base\n"
            "  -v, --verbose             describe the model and report timings\n"
            "  --pvq-repack              hold PVQ weights also as int8 points + group scales (1.5 bytes per\n"
            "                            weight of RAM) for a faster decode\n"
            "  --pvq-f32-act             PVQ products with float32 activations instead of int8: slower, the\n"
            "                            converter's torch model's arithmetic (for checking agreement)\n"
            "  --isa SET                 kernel set: auto (default: the best this CPU runs), avx512, avx2 or\n"
            "                            scalar; the environment variable PVQ_ISA does the same\n"
            "  -h, --help                this text\n");
}

static int parse_int(const char *flag, const char *v, int lo, int hi, int *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "error: %s expects an integer in [%d, %d], got '%s'\n", flag, lo, hi, v);
        return -1;
    }
    *out = (int)x;
    return 0;
}

static int parse_float(const char *flag, const char *v, float *out) {
    char *end;
    errno = 0;
    float x = strtof(v, &end);
    if (errno || *end || end == v || !isfinite(x)) {
        fprintf(stderr, "error: %s expects a number, got '%s'\n", flag, v);
        return -1;
    }
    *out = x;
    return 0;
}

/* Returns 0 to go on, 1 after --help, -1 on a bad flag. */
static int parse_args(int argc, char **argv, options *o) {
    memset(o, 0, sizeof *o);
    o->n_predict = 128, o->n_batch = 512, o->chunks = -1;
    o->sp = pvq_sampler_default_params();
    o->sp.seed = (uint64_t)time(NULL);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
#define IS(s) (!strcmp(a, s))
        if (IS("-h") || IS("--help")) {
            usage(stdout);
            return 1;
        }
        if (IS("--print-token-ids")) { o->print_ids = 1; continue; }
        if (IS("--perplexity")) { o->perplexity = 1; continue; }
        if (IS("--kl-divergence")) { o->kld = 1; continue; }
        if (IS("-v") || IS("--verbose")) { o->verbose = 1; continue; }
        if (IS("--pvq-repack")) { o->pvq_repack = 1; continue; }
        if (IS("--pvq-f32-act")) { o->pvq_f32_act = 1; continue; }
        if (i + 1 >= argc) {
            fprintf(stderr, "error: %s needs a value (or is unknown; see --help)\n", a);
            return -1;
        }
        const char *v = argv[++i];
        int rc = 0, seed;
        if (IS("-m") || IS("--model")) o->model = v;
        else if (IS("-p") || IS("--prompt")) o->prompt = v;
        else if (IS("-f") || IS("--file")) o->file = v;
        else if (IS("--kl-divergence-base")) o->kld_base = v;
        else if (IS("--isa")) o->isa = v;
        else if (IS("-n") || IS("--n-predict")) rc = parse_int(a, v, -1, 1 << 24, &o->n_predict);
        else if (IS("-t") || IS("--threads")) rc = parse_int(a, v, 1, 1024, &o->n_threads);
        else if (IS("-c") || IS("--ctx-size")) rc = parse_int(a, v, 1, 1 << 20, &o->n_ctx);
        else if (IS("-b") || IS("--batch-size")) rc = parse_int(a, v, 1, 1 << 16, &o->n_batch);
        else if (IS("-ngl") || IS("--n-gpu-layers")) rc = parse_int(a, v, -1, 1 << 20, &o->n_gpu_layers);
        else if (IS("--chunks")) rc = parse_int(a, v, 1, 1 << 24, &o->chunks);
        else if (IS("--top-k")) rc = parse_int(a, v, 0, 1 << 24, &o->sp.top_k);
        else if (IS("--repeat-last-n")) rc = parse_int(a, v, 0, 1 << 20, &o->sp.repeat_last_n);
        else if (IS("-s") || IS("--seed")) rc = parse_int(a, v, 0, 2147483647, &seed), o->sp.seed = (uint64_t)seed;
        else if (IS("--temp")) rc = parse_float(a, v, &o->sp.temp);
        else if (IS("--top-p")) rc = parse_float(a, v, &o->sp.top_p);
        else if (IS("--min-p")) rc = parse_float(a, v, &o->sp.min_p);
        else if (IS("--repeat-penalty")) rc = parse_float(a, v, &o->sp.repeat_penalty);
        else {
            fprintf(stderr, "error: unknown flag %s (see --help)\n", a);
            return -1;
        }
        if (rc) return -1;
#undef IS
    }
    if (!o->model) {
        fprintf(stderr, "error: no model given (-m FILE)\n");
        return -1;
    }
    if (o->prompt && o->file) {
        fprintf(stderr, "error: give -p or -f, not both\n");
        return -1;
    }
    if ((o->perplexity || o->kld) && o->perplexity == o->kld) {
        fprintf(stderr, "error: --perplexity and --kl-divergence are separate runs\n");
        return -1;
    }
    if (o->kld && !o->kld_base) {
        fprintf(stderr, "error: --kl-divergence needs --kl-divergence-base FILE\n");
        return -1;
    }
    return 0;
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "error: cannot open %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0, got;
    char *buf = malloc(cap);
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            char *b = realloc(buf, cap *= 2);
            if (!b) free(buf);
            buf = b;
        }
    }
    if (!buf || ferror(f)) {
        fprintf(stderr, "error: cannot read %s\n", path);
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    *len = n;
    return buf;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int32_t *tokenize(const pvq_model *m, const char *text, size_t len, int32_t *n) {
    char err[256];
    int32_t cap = (int32_t)(len + 16 < (1u << 30) ? len + 16 : (1u << 30));
    int32_t *toks = malloc((size_t)cap * sizeof *toks);
    if (!toks) {
        fprintf(stderr, "error: out of memory\n");
        return NULL;
    }
    pvq_status st = pvq_tokenize(m, text, len, 1, 1, toks, cap, n, err, sizeof err);
    if (st != PVQ_OK) {
        fprintf(stderr, "error: cannot tokenize the %s: %s\n", "input", err);
        free(toks);
        return NULL;
    }
    return toks;
}

/* ---- generation */

/* Prints a token's bytes as valid UTF-8: an unfinished character is held back until its last byte arrives,
 * invalid bytes become U+FFFD (maximal subparts, as Python's errors="replace"). */
typedef struct {
    char buf[256 + 4], out[3 * (256 + 4)];
    size_t held;
} stream;

static void stream_write(stream *s, size_t len, int final) {
    size_t n_out, used = pvq_utf8_repair(s->buf, len, final, s->out, &n_out);
    fwrite(s->out, 1, n_out, stdout);
    memmove(s->buf, s->buf + used, len - used);
    s->held = len - used;
    fflush(stdout);
}

static void stream_put(const pvq_model *m, stream *s, int32_t id) {
    int32_t n = pvq_token_to_piece(m, id, s->buf + s->held, 256, 0);
    if (n < 0) return; /* longer than 256 bytes: no real vocabulary has such tokens */
    stream_write(s, s->held + (size_t)n, 0);
}

/* End of generation: a character the model never finished is one U+FFFD. */
static void stream_end(stream *s) {
    if (s->held) stream_write(s, s->held, 1);
}

static int generate(pvq_model *m, pvq_context *c, const options *o, const char *text, size_t len) {
    char err[256];
    int32_t n_prompt;
    int32_t *prompt = tokenize(m, text, len, &n_prompt);
    if (!prompt) return 1;
    int rc = 1;
    pvq_sampler *smp = NULL;
    if (n_prompt == 0) {
        fprintf(stderr, "error: the prompt is empty\n");
        goto done;
    }
    if (n_prompt > pvq_n_ctx(c)) {
        fprintf(stderr, "error: the prompt is %d tokens, longer than the context (-c %d)\n", n_prompt, pvq_n_ctx(c));
        goto done;
    }
    if (pvq_sampler_new(&o->sp, pvq_n_vocab(m), &smp, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        goto done;
    }
    if (o->print_ids) {
        for (int32_t i = 0; i < n_prompt; i++) printf("%s%d", i ? " " : "", prompt[i]);
        printf("\n");
    } else {
        fwrite(text, 1, len, stdout);
        fflush(stdout);
    }
    double t0 = now();
    if (pvq_eval(c, prompt, n_prompt, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        goto done;
    }
    double t1 = now();
    for (int32_t i = 0; i < n_prompt; i++) pvq_sampler_accept(smp, prompt[i]);
    stream out = {{0}, {0}, 0};
    int n_gen = 0;
    while (o->n_predict < 0 || n_gen < o->n_predict) {
        int32_t tok = pvq_sampler_sample(smp, pvq_logits(c, -1));
        if (pvq_token_is_eog(m, tok)) break;
        pvq_sampler_accept(smp, tok);
        n_gen++;
        if (o->print_ids)
            printf("%s%d", n_gen > 1 ? " " : "", tok);
        else
            stream_put(m, &out, tok);
        if (pvq_n_past(c) >= pvq_n_ctx(c)) {
            if (o->n_predict >= 0) fprintf(stderr, "\nnote: context full (-c %d), stopping\n", pvq_n_ctx(c));
            break;
        }
        if (pvq_eval(c, &tok, 1, err, sizeof err)) {
            fprintf(stderr, "error: %s\n", err);
            goto done;
        }
    }
    double t2 = now();
    if (!o->print_ids) stream_end(&out);
    printf("\n");
    if (o->verbose)
        fprintf(stderr, "prompt: %d tokens in %.3f s (%.1f tok/s); generated: %d tokens in %.3f s (%.1f tok/s)\n",
                n_prompt, t1 - t0, n_prompt / (t1 - t0), n_gen, t2 - t1, n_gen / (t2 - t1));
    rc = 0;
done:
    pvq_sampler_free(smp);
    free(prompt);
    return rc;
}

/* ---- perplexity and KL divergence (llama-perplexity's protocol) */

static const char KLD_MAGIC[8] = {'P', 'V', 'Q', 'K', 'L', 'D', '0', '1'};

/* log-softmax of logits into lp (double sums as llama-perplexity does). */
static void log_softmax(const float *logits, int n, float *lp) {
    float mx = logits[0];
    for (int i = 1; i < n; i++) mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += expf(logits[i] - mx);
    float lse = (float)log(sum);
    for (int i = 0; i < n; i++) lp[i] = logits[i] - mx - lse;
}

static int score(pvq_model *m, pvq_context *c, const options *o, const char *text, size_t len) {
    char err[256];
    int n_ctx = pvq_n_ctx(c), n_vocab = pvq_n_vocab(m), first = n_ctx / 2, rc = 1;
    int32_t n_tok = 0, n_chunk = 0;
    int32_t *toks = NULL;
    FILE *kf = NULL;
    uint16_t *base16 = NULL;
    float *lp = malloc((size_t)n_vocab * sizeof *lp);
    if (!lp) goto oom;
    if (o->kld) { /* the tokens come from the base file */
        if (!(kf = fopen(o->kld_base, "rb"))) {
            fprintf(stderr, "error: cannot open %s: %s\n", o->kld_base, strerror(errno));
            goto done;
        }
        char magic[8];
        int32_t hdr[3];
        if (fread(magic, 1, 8, kf) != 8 || memcmp(magic, KLD_MAGIC, 8) || fread(hdr, 4, 3, kf) != 3) {
            fprintf(stderr, "error: %s is not a pvqrun KL-divergence base file\n", o->kld_base);
            goto done;
        }
        if (hdr[0] != n_ctx || hdr[1] != n_vocab || hdr[2] <= 0 || hdr[2] > (1 << 20)) {
            fprintf(stderr, "error: %s was saved with -c %d and %d tokens in the vocabulary; this run has -c %d, %d\n",
                    o->kld_base, hdr[0], hdr[1], n_ctx, n_vocab);
            goto done;
        }
        n_chunk = o->chunks > 0 && o->chunks < hdr[2] ? o->chunks : hdr[2];
        toks = malloc((size_t)hdr[2] * n_ctx * sizeof *toks);
        base16 = malloc((size_t)n_vocab * 2);
        if (!toks || !base16) goto oom;
        if (fread(toks, sizeof *toks, (size_t)hdr[2] * n_ctx, kf) != (size_t)hdr[2] * n_ctx) {
            fprintf(stderr, "error: %s is truncated\n", o->kld_base);
            goto done;
        }
        for (int64_t i = 0; i < (int64_t)hdr[2] * n_ctx; i++)
            if (toks[i] < 0 || toks[i] >= n_vocab) {
                fprintf(stderr, "error: %s holds a token id outside the vocabulary\n", o->kld_base);
                goto done;
            }
    } else {
        if (!(toks = tokenize(m, text, len, &n_tok))) goto done;
        if (n_tok < 2 * n_ctx) {
            fprintf(stderr, "error: the text is %d tokens; perplexity with -c %d needs at least %d\n", n_tok, n_ctx,
                    2 * n_ctx);
            goto done;
        }
        n_chunk = n_tok / n_ctx;
        if (o->chunks > 0 && o->chunks < n_chunk) n_chunk = o->chunks;
        if (o->kld_base) {
            if (!(kf = fopen(o->kld_base, "wb"))) {
                fprintf(stderr, "error: cannot create %s: %s\n", o->kld_base, strerror(errno));
                goto done;
            }
            int32_t hdr[3] = {n_ctx, n_vocab, n_chunk};
            fwrite(KLD_MAGIC, 1, 8, kf);
            fwrite(hdr, 4, 3, kf);
            fwrite(toks, sizeof *toks, (size_t)n_chunk * n_ctx, kf);
            if (!(base16 = malloc((size_t)n_vocab * 2))) goto oom;
        }
    }
    fprintf(stderr, "scoring %d chunks of %d tokens (second halves)\n", n_chunk, n_ctx);
    double nll = 0, kld = 0, t0 = now();
    long count = 0;
    int same_top = 0;
    for (int ch = 0; ch < n_chunk; ch++) {
        int32_t *chunk = toks + (size_t)ch * n_ctx, saved = chunk[0];
        if (pvq_adds_bos(m)) chunk[0] = pvq_token_bos(m);
        pvq_kv_truncate(c, 0);
        pvq_status st = pvq_eval(c, chunk, n_ctx, err, sizeof err);
        chunk[0] = saved;
        if (st) {
            fprintf(stderr, "error: %s\n", err);
            goto done;
        }
        for (int j = first; j < n_ctx - 1; j++) {
            log_softmax(pvq_logits(c, j), n_vocab, lp);
            nll -= lp[chunk[j + 1]];
            count++;
            if (o->kld) {
                if (fread(base16, 2, (size_t)n_vocab, kf) != (size_t)n_vocab) {
                    fprintf(stderr, "error: %s is truncated\n", o->kld_base);
                    goto done;
                }
                double kl = 0;
                int top_b = 0, top = 0;
                float best_b = -INFINITY;
                for (int v = 0; v < n_vocab; v++) {
                    float b = pvq_f16_to_f32(base16[v]);
                    kl += exp(b) * (b - lp[v]);
                    if (b > best_b) best_b = b, top_b = v;
                    if (lp[v] > lp[top]) top = v;
                }
                kld += kl;
                same_top += top == top_b;
            } else if (kf) {
                for (int v = 0; v < n_vocab; v++) base16[v] = pvq_f32_to_f16(lp[v]);
                fwrite(base16, 2, (size_t)n_vocab, kf);
            }
        }
        fprintf(stderr, "[%d]%.4f%s", ch + 1, exp(nll / count), ch + 1 < n_chunk ? "," : "\n");
    }
    if (kf && !o->kld && ferror(kf)) {
        fprintf(stderr, "error: writing %s failed\n", o->kld_base);
        goto done;
    }
    printf("perplexity: %.6f over %d chunks (%ld tokens scored, %.1f s)\n", exp(nll / count), n_chunk, count,
           now() - t0);
    if (o->kld) printf("mean KLD: %.6f, same top token: %.4f\n", kld / count, (double)same_top / count);
    rc = 0;
    goto done;
oom:
    fprintf(stderr, "error: out of memory\n");
done:
    if (kf && fclose(kf) && !o->kld && rc == 0) {
        fprintf(stderr, "error: writing %s failed\n", o->kld_base);
        rc = 1;
    }
    free(lp), free(toks), free(base16);
    return rc;
}

int main(int argc, char **argv) {
    options o;
    int a = parse_args(argc, argv, &o);
    if (a) return a > 0 ? 0 : 2;
    char err[512];
    size_t len = 0;
    char *text = NULL;
    if (o.file) {
        if (!(text = read_file(o.file, &len))) return 1;
    } else if (o.prompt) {
        len = strlen(o.prompt);
        if (!(text = malloc(len + 1))) return 1;
        memcpy(text, o.prompt, len + 1);
    } else if (!o.kld) {
        fprintf(stderr, "error: no prompt (-p TEXT or -f FILE)\n");
        return 2;
    }
    if (o.isa && pvq_set_isa(o.isa, err, sizeof err)) {
        fprintf(stderr, "error: --isa: %s\n", err);
        free(text);
        return 2;
    }
    pvq_model *m = NULL;
    pvq_model_params mp = pvq_model_default_params();
    mp.pvq_repack = o.pvq_repack;
    mp.pvq_f32_activations = o.pvq_f32_act;
    if (pvq_model_load_params(o.model, &mp, &m, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        free(text);
        return 1;
    }
    if (o.verbose) {
        pvq_model_describe(m, err, sizeof err);
        fprintf(stderr, "%s\n", err);
    }
    pvq_context_params cp = pvq_context_default_params();
    cp.n_ctx = o.n_ctx, cp.n_threads = o.n_threads, cp.n_batch = o.n_batch, cp.n_gpu_layers = o.n_gpu_layers;
    cp.logits_all = o.perplexity || o.kld;
    if (cp.logits_all && o.n_ctx == 0) cp.n_ctx = 512;
    if (cp.logits_all) cp.n_batch = cp.n_ctx;
    pvq_context *c = NULL;
    int rc = 1;
    if (pvq_context_new(m, &cp, &c, err, sizeof err))
        fprintf(stderr, "error: %s\n", err);
    else if (o.perplexity || o.kld)
        rc = score(m, c, &o, text, len);
    else
        rc = generate(m, c, &o, text, len);
    pvq_context_free(c);
    pvq_model_free(m);
    free(text);
    return rc;
}
