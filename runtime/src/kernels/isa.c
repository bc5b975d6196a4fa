/* Kernel set detection and choice (isa.h). */
#include "isa.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const NAMES[ISA_COUNT] = {[ISA_SCALAR] = "scalar", [ISA_AVX2] = "avx2", [ISA_AVX512] = "avx512"};

const char *isa_name(isa_id isa) { return isa >= 0 && isa < ISA_COUNT ? NAMES[isa] : "?"; }

int isa_cpu_supports(isa_id isa) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init(); /* the checks below include the OS's support for the registers (XCR0) */
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    switch (isa) {
    case ISA_SCALAR: return 1;
    case ISA_AVX2: return avx2;
    case ISA_AVX512:
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi") &&
               __builtin_cpu_supports("avx512vnni");
    default: return 0;
    }
#else
    return isa == ISA_SCALAR;
#endif
}

int isa_fast_gathers(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_is("intel");
#else
    return 0;
#endif
}

isa_id isa_best(void) {
    isa_id best = ISA_SCALAR;
    for (int i = 1; i < ISA_COUNT; i++)
        if (isa_cpu_supports((isa_id)i)) best = (isa_id)i;
    return best;
}

static atomic_int active = -1;
static char env_error[200];

/* The set named, or -1 with a message. */
static int lookup(const char *name, char *err, size_t err_len) {
    if (!name || !*name || !strcmp(name, "auto")) return isa_best();
    for (int i = 0; i < ISA_COUNT; i++) {
        if (strcmp(name, NAMES[i])) continue;
        if (isa_cpu_supports((isa_id)i)) return i;
        char have[64] = "";
        for (int j = 0; j < ISA_COUNT; j++)
            if (isa_cpu_supports((isa_id)j)) snprintf(have + strlen(have), sizeof have - strlen(have), "%s%s", *have ? ", " : "", NAMES[j]);
        if (err_len) snprintf(err, err_len, "kernel set %s needs instructions this CPU lacks (it runs: %s)", name, have);
        return -1;
    }
    if (err_len) snprintf(err, err_len, "unknown kernel set '%.40s' (choose scalar, avx2, avx512 or auto)", name);
    return -1;
}

static void init_from_env(void) {
    const char *env = getenv("PVQ_ISA");
    char why[160];
    int isa = lookup(env, why, sizeof why);
    if (isa < 0) {
        snprintf(env_error, sizeof env_error, "PVQ_ISA: %s", why);
        isa = isa_best();
    }
    int unset = -1;
    atomic_compare_exchange_strong(&active, &unset, isa); /* an isa_select before first use wins */
}

static pthread_once_t once = PTHREAD_ONCE_INIT;

isa_id isa_active(void) {
    int isa = atomic_load_explicit(&active, memory_order_relaxed);
    if (isa >= 0) return (isa_id)isa;
    pthread_once(&once, init_from_env);
    return (isa_id)atomic_load(&active);
}

int isa_select(const char *name, char *err, size_t err_len) {
    pthread_once(&once, init_from_env);
    int isa = lookup(name, err, err_len);
    if (isa < 0) return -1;
    atomic_store(&active, isa);
    env_error[0] = '\0'; /* an explicit choice replaces the environment's */
    return 0;
}

const char *isa_env_error(void) {
    pthread_once(&once, init_from_env);
    return env_error;
}
