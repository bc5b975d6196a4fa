/* pvq-cuda: the CUDA backend from the command line: device report, greedy generation on the GPU (or
 * on the CPU when no usable GPU exists), GPU-vs-CPU logits, the kernel self test and the benchmarks. */
#include "cuda/pvq_cuda.h"
#include "pvq.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { EXIT_CHECK = 1, EXIT_USAGE = 2, EXIT_NO_DEVICE = 3 };

static void usage(FILE *o)
{
    fprintf(o,
            "usage: pvq-cuda COMMAND [options]\n"
            "  info                      the CUDA device, or why there is none (exit 3)\n"
            "  generate -m MODEL -p PROMPT [-n N] [-c CTX] [-ngl N] [--print-token-ids]\n"
            "                            greedy continuation on the GPU; -ngl 0 runs on the CPU, -ngl -1 (default)\n"
            "                            offloads every layer; without a usable GPU it says so and runs on the CPU\n"
            "  compare -m MODEL -p PROMPT [-n N] [--tol T] [--f32-act] [--near-tie M]\n"
            "                            logits of the GPU path against the CPU path for the prompt and N greedy\n"
            "                            steps (default 16), both fed the CPU's token; exit 0 when every step has\n"
            "                            max|dlogit| / max|logit| <= T (default 1e-2) and both paths choose the same\n"
            "                            tokens, or part only where the CPU's top-2 margin is < M (default 0: never);\n"
            "                            --f32-act: PVQ products on float32 activations on both paths\n"
            "  selftest                  CUDA kernels against host references on random data\n"
            "  bench-gemv [--reps N]     PVQ GEMV bandwidth vs device copy and fp16 GEMV; tensor-core prefill\n"
            "  bench-decode [--bpw 3.25|4.25] [-n N]\n"
            "                            decode tokens/s of a Llama-7B-shaped model with random PVQ weights\n"
            "exit status: 0 ok, 1 a check failed, 2 bad usage or input, 3 no usable CUDA device\n");
}

typedef struct {
    const char *model, *prompt;
    int n_predict, n_ctx, ngl, print_ids, reps, f32_act;
    double tol, bpw, near_tie;
} options;

static int parse_num(const char *flag, const char *v, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || *end || end == v || !(x >= lo && x <= hi)) {
        fprintf(stderr, "error: %s expects a number in [%g, %g], got '%s'\n", flag, lo, hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

static int parse_args(int argc, char **argv, options *o)
{
    memset(o, 0, sizeof *o);
    o->n_predict = 16, o->n_ctx = 512, o->ngl = -1, o->reps = 50, o->tol = 1e-2, o->bpw = 3.25;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--print-token-ids")) { o->print_ids = 1; continue; }
        if (!strcmp(a, "--f32-act")) { o->f32_act = 1; continue; }
        if (i + 1 >= argc) {
            fprintf(stderr, "error: unknown flag or missing value: %s\n", a);
            return -1;
        }
        const char *v = argv[++i];
        double x;
        if (!strcmp(a, "-m")) {
            o->model = v;
        } else if (!strcmp(a, "-p")) {
            o->prompt = v;
        } else if (!strcmp(a, "-n")) {
            if (parse_num(a, v, 0, 1 << 20, &x)) return -1;
            o->n_predict = (int)x;
        } else if (!strcmp(a, "-c")) {
            if (parse_num(a, v, 1, 1 << 20, &x)) return -1;
            o->n_ctx = (int)x;
        } else if (!strcmp(a, "-ngl")) {
            if (parse_num(a, v, -1, 1 << 20, &x)) return -1;
            o->ngl = (int)x;
        } else if (!strcmp(a, "--reps")) {
            if (parse_num(a, v, 1, 1e6, &x)) return -1;
            o->reps = (int)x;
        } else if (!strcmp(a, "--tol")) {
            if (parse_num(a, v, 0, 1e6, &x)) return -1;
            o->tol = x;
        } else if (!strcmp(a, "--near-tie")) {
            if (parse_num(a, v, 0, 1e6, &x)) return -1;
            o->near_tie = x;
        } else if (!strcmp(a, "--bpw")) {
            if (parse_num(a, v, 3.25, 4.25, &x)) return -1;
            if (x != 3.25 && x != 4.25) {
                fprintf(stderr, "error: --bpw is 3.25 or 4.25 (the D = 8 presets)\n");
                return -1;
            }
            o->bpw = x;
        } else {
            fprintf(stderr, "error: unknown flag %s\n", a);
            return -1;
        }
    }
    return 0;
}

/* The two paths behind one interface: the CPU runtime (pvq.h) and the model on the GPU. */
typedef struct {
    pvq_context *cpu;
    pvq_cuda_model *gpu;
    float *logits;     /* the GPU path's last logits */
} path;

static int path_eval(path *p, const int32_t *toks, int n, char *err, size_t err_len)
{
    if (p->cpu) return pvq_eval(p->cpu, toks, n, err, err_len) != PVQ_OK;
    for (int i = 0; i < n; i += 512) {
        int k = n - i < 512 ? n - i : 512;
        if (pvq_cuda_forward(p->gpu, toks + i, k, p->logits, err, err_len)) return -1;
    }
    return 0;
}

static const float *path_logits(const path *p) { return p->cpu ? pvq_logits(p->cpu, -1) : p->logits; }

static int cpu_path(pvq_model *pm, const options *o, path *p)
{
    char err[512];
    pvq_context_params cp = pvq_context_default_params();
    cp.n_ctx = o->n_ctx;
    memset(p, 0, sizeof *p);
    if (pvq_context_new(pm, &cp, &p->cpu, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        return -1;
    }
    return 0;
}

static int gpu_path(const model *m, const options *o, path *p)
{
    char err[512];
    memset(p, 0, sizeof *p);
    if (!(p->logits = malloc((size_t)m->n_vocab * sizeof(float)))) {
        fprintf(stderr, "error: out of memory\n");
        return -1;
    }
    if (pvq_cuda_model_load(m, o->n_ctx, 512, &p->gpu, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        free(p->logits);
        return -1;
    }
    return 0;
}

static void path_free(path *p)
{
    pvq_context_free(p->cpu);
    pvq_cuda_model_free(p->gpu);
    free(p->logits);
}

static int32_t *tokenize(const pvq_model *pm, const char *text, int32_t *n)
{
    char err[256];
    size_t len = strlen(text);
    int32_t cap = (int32_t)len + 8;
    int32_t *toks = malloc((size_t)cap * sizeof *toks);
    if (!toks || pvq_tokenize(pm, text, len, 1, 1, toks, cap, n, err, sizeof err)) {
        fprintf(stderr, "error: cannot tokenize the prompt: %s\n", toks ? err : "out of memory");
        free(toks);
        return NULL;
    }
    return toks;
}

static int greedy(const float *logits, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

/* logits[best] minus the second largest logit */
static double top2_margin(const float *logits, int n, int best)
{
    double second = -INFINITY;
    for (int i = 0; i < n; i++)
        if (i != best && logits[i] > second) second = logits[i];
    return logits[best] - second;
}

static int cmd_info(void)
{
    pvq_cuda_device d;
    char why[512];
    if (pvq_cuda_probe(&d, why, sizeof why)) {
        printf("%s\n", why);
        return EXIT_NO_DEVICE;
    }
    printf("CUDA device 0 of %d: %s, compute capability %d.%d, %d SMs, %.1f GiB; runtime %d, driver %d\n", d.count,
           d.name, d.cc_major, d.cc_minor, d.sm_count, (double)d.total_mem / (1 << 30), d.runtime_version,
           d.driver_version);
    return 0;
}

static int cmd_generate(const options *o)
{
    char err[512];
    pvq_model *pm = NULL;
    model m;
    path p;
    int rc = EXIT_USAGE, on_gpu = o->ngl != 0, have_model = 0, have_path = 0;
    int32_t n_prompt = 0, *prompt = NULL;
    if (pvq_model_load(o->model, &pm, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        return EXIT_USAGE;
    }
    if (o->ngl > 0 && o->ngl < pvq_n_layer(pm)) {
        fprintf(stderr, "error: -ngl %d offloads part of the %d layers; this build runs all layers on the GPU (-ngl -1) "
                        "or none (-ngl 0)\n", o->ngl, pvq_n_layer(pm));
        goto done;
    }
    if (on_gpu) {
        pvq_cuda_device d;
        char why[512];
        if (pvq_cuda_probe(&d, why, sizeof why)) {
            fprintf(stderr, "pvq-cuda: %s; running on the CPU\n", why);
            on_gpu = 0;
        }
    }
    if (!(prompt = tokenize(pm, o->prompt, &n_prompt))) goto done;
    if (n_prompt == 0 || n_prompt + o->n_predict > o->n_ctx) {
        fprintf(stderr, "error: the prompt (%d tokens) and %d new tokens do not fit the context (-c %d)\n", n_prompt,
                o->n_predict, o->n_ctx);
        goto done;
    }
    if (on_gpu) {
        if (model_load(&m, o->model, 0, err, sizeof err)) {
            fprintf(stderr, "error: %s\n", err);
            goto done;
        }
        have_model = 1;
    }
    if (on_gpu ? gpu_path(&m, o, &p) : cpu_path(pm, o, &p)) goto done;
    have_path = 1;
    fprintf(stderr, "pvq-cuda: generating on the %s\n", on_gpu ? "GPU (all layers)" : "CPU");
    if (o->print_ids) {
        for (int32_t i = 0; i < n_prompt; i++) printf("%s%d", i ? " " : "", prompt[i]);
        printf("\n");
    } else {
        fputs(o->prompt, stdout);
    }
    rc = EXIT_CHECK;
    if (path_eval(&p, prompt, n_prompt, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        goto done;
    }
    for (int n_gen = 0; n_gen < o->n_predict; n_gen++) {
        int32_t tok = greedy(path_logits(&p), pvq_n_vocab(pm));
        if (pvq_token_is_eog(pm, tok)) break;
        if (o->print_ids) {
            printf("%s%d", n_gen ? " " : "", tok);
        } else {
            char piece[256];
            int32_t k = pvq_token_to_piece(pm, tok, piece, sizeof piece, 0);
            if (k > 0) fwrite(piece, 1, (size_t)k, stdout);
        }
        fflush(stdout);
        if (path_eval(&p, &tok, 1, err, sizeof err)) {
            fprintf(stderr, "error: %s\n", err);
            goto done;
        }
    }
    printf("\n");
    rc = 0;
done:
    if (have_path) path_free(&p);
    if (have_model) model_free(&m);
    free(prompt);
    pvq_model_free(pm);
    return rc;
}

/* max |a - b| / max |b| over n values */
static double rel_diff(const float *a, const float *b, int n)
{
    double d = 0, mx = 0;
    for (int i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        mx = fmax(mx, fabs((double)b[i]));
    }
    return mx > 0 ? d / mx : d;
}

static int cmd_compare(const options *o)
{
    char err[512], why[512];
    pvq_cuda_device d;
    if (pvq_cuda_probe(&d, why, sizeof why)) {
        fprintf(stderr, "pvq-cuda: %s; compare needs a GPU\n", why);
        return EXIT_NO_DEVICE;
    }
    pvq_model *pm = NULL;
    model m;
    path cpu, gpu;
    int rc = EXIT_USAGE, have_model = 0, have_cpu = 0, have_gpu = 0;
    int32_t n_prompt = 0, *prompt = NULL;
    pvq_model_params mp = pvq_model_default_params();
    mp.pvq_f32_activations = o->f32_act;
    if (pvq_model_load_params(o->model, &mp, &pm, err, sizeof err) || model_load(&m, o->model, 0, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        goto done;
    }
    have_model = 1;
    if (!(prompt = tokenize(pm, o->prompt, &n_prompt))) goto done;
    if (n_prompt == 0 || n_prompt + o->n_predict > o->n_ctx) {
        fprintf(stderr, "error: the prompt and %d new tokens do not fit the context (-c %d)\n", o->n_predict, o->n_ctx);
        goto done;
    }
    if (cpu_path(pm, o, &cpu)) goto done;
    have_cpu = 1;
    if (gpu_path(&m, o, &gpu)) goto done;
    have_gpu = 1;
    pvq_cuda_set_f32_activations(gpu.gpu, o->f32_act);
    rc = EXIT_CHECK;
    if (path_eval(&cpu, prompt, n_prompt, err, sizeof err) || path_eval(&gpu, prompt, n_prompt, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        goto done;
    }
    const int nv = pvq_n_vocab(pm);
    double worst = 0;
    int same = 1, ties = 0;
    printf("activations: %s\n", o->f32_act ? "float32 on both paths" : "the paths' defaults");
    printf("step  max|dlogit|/max|logit|  cpu_token  gpu_token\n");
    for (int step = 0; step <= o->n_predict; step++) {
        const float *lc = path_logits(&cpu), *lg = path_logits(&gpu);
        double r = rel_diff(lg, lc, nv);
        int32_t tc = greedy(lc, nv), tg = greedy(lg, nv);
        printf("%4d  %22.3e  %9d  %9d", step, r, tc, tg);
        worst = fmax(worst, r);
        if (tc != tg) {   /* a parting is acceptable only where the CPU itself nearly hesitates */
            const double margin = top2_margin(lc, nv, tc);
            const int tie = margin < o->near_tie;
            printf("  parting: cpu top-2 margin %.4f (%s)", margin, tie ? "near-tie, accepted" : "not a near-tie");
            ties += tie;
            same &= tie;
        }
        printf("\n");
        if (step == o->n_predict || !same) break;
        if (path_eval(&cpu, &tc, 1, err, sizeof err) || path_eval(&gpu, &tc, 1, err, sizeof err)) {
            fprintf(stderr, "error: %s\n", err);
            goto done;
        }
    }
    printf("worst %.3e (tolerance %.1e), greedy tokens %s", worst, o->tol, !same ? "DIFFER" : "identical");
    if (ties) printf(" except at %d near-tie%s (cpu top-2 margin < %g)", ties, ties > 1 ? "s" : "", o->near_tie);
    printf("\n");
    rc = worst <= o->tol && same ? 0 : EXIT_CHECK;
done:
    if (have_cpu) path_free(&cpu);
    if (have_gpu) path_free(&gpu);
    if (have_model) model_free(&m);
    free(prompt);
    pvq_model_free(pm);
    return rc;
}

static int need_device(const char *cmd)
{
    pvq_cuda_device d;
    char why[512];
    if (pvq_cuda_probe(&d, why, sizeof why)) {
        fprintf(stderr, "pvq-cuda: %s; %s needs a GPU\n", why, cmd);
        return -1;
    }
    printf("device: %s (compute capability %d.%d, %d SMs)\n", d.name, d.cc_major, d.cc_minor, d.sm_count);
    return 0;
}

int main(int argc, char **argv)
{
    options o;
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    const char *cmd = argv[1];
    if (parse_args(argc, argv, &o)) return EXIT_USAGE;
    char err[512];
    if (!strcmp(cmd, "info")) return cmd_info();
    if (!strcmp(cmd, "generate") || !strcmp(cmd, "compare")) {
        if (!o.model || !o.prompt) {
            fprintf(stderr, "error: %s needs -m MODEL and -p PROMPT\n", cmd);
            return EXIT_USAGE;
        }
        return !strcmp(cmd, "generate") ? cmd_generate(&o) : cmd_compare(&o);
    }
    if (!strcmp(cmd, "selftest") || !strcmp(cmd, "bench-gemv") || !strcmp(cmd, "bench-decode")) {
        if (need_device(cmd)) return EXIT_NO_DEVICE;
        int r;
        if (!strcmp(cmd, "selftest")) {
            r = pvq_cuda_selftest(err, sizeof err);
            if (r > 0) printf("%d checks FAILED\n", r);
            else if (r == 0) printf("all checks passed\n");
        } else if (!strcmp(cmd, "bench-gemv")) {
            r = pvq_cuda_bench_gemv(o.reps, err, sizeof err);
        } else {
            uint32_t type = o.bpw < 4.0 ? 0x50000000u | 8u << 20 | 3u << 16 | 14u : 0x50000000u | 8u << 20 | 4u << 16 | 29u;
            r = pvq_cuda_bench_decode(type, o.n_predict > 0 ? o.n_predict : 128, err, sizeof err);
        }
        if (r < 0) fprintf(stderr, "error: %s\n", err);
        return r == 0 ? 0 : EXIT_CHECK;
    }
    fprintf(stderr, "error: unknown command '%s'\n", cmd);
    usage(stderr);
    return EXIT_USAGE;
}
