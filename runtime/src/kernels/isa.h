/* The kernel sets the runtime carries, one per instruction set. The library is compiled for baseline
 * x86-64 and each kernel file for its own instruction set; one set is active per process: the best this
 * CPU runs, or the one PVQ_ISA (or pvq_set_isa) names, so that one machine can run every path it has
 * (docs/runtime.md, "Kernel sets"). Standalone: the PVQ codec's test library carries it too. */
#ifndef PVQ_ISA_H
#define PVQ_ISA_H

#include <stddef.h>

/* avx2: AVX2 + FMA + F16C. avx512: avx2 and AVX-512 F, BW, VL, VBMI, VNNI (Ice Lake, Zen 4 and later;
 * Skylake-SP and Cascade Lake, which lack VBMI, run avx2). */
typedef enum { ISA_SCALAR, ISA_AVX2, ISA_AVX512, ISA_COUNT } isa_id;

const char *isa_name(isa_id isa);
/* 1 when this CPU (and its operating system) runs every instruction of the set. */
int isa_cpu_supports(isa_id isa);
/* 1 on Intel cores, whose AVX2 and AVX-512 gathers run at about their loads' speed (pvq_fast8.gather_halves). */
int isa_fast_gathers(void);
/* The best set this CPU runs. */
isa_id isa_best(void);
/* The active set; on first use PVQ_ISA, when set and valid, else the best. */
isa_id isa_active(void);
/* Makes the set called name active ("scalar", "avx2", "avx512"; NULL, "" or "auto": the best). Returns 0,
 * or -1 with a message when the name is unknown or the CPU lacks the set (the active one stays). */
int isa_select(const char *name, char *err, size_t err_len);
/* Why PVQ_ISA could not be used ("" when it could or is unset): loading a model fails with it. */
const char *isa_env_error(void);

#endif
