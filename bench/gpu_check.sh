#!/usr/bin/env bash
# The CUDA backend's check on a GPU machine that has the OS, the CUDA toolkit and Python (torch, numpy,
# gguf, safetensors, scipy, tqdm) but no network and no model cache (docs/cuda.md, "The GPU check"):
#
#   bash bench/gpu_check.sh OUT_DIR [--dry]
#
# build (two sequential makes: never two makes linking libpvq.so at once); the device; the kernel self
# test; its own test models (bench/gpu_models.py: SmolLM2-shaped random weights and the qwen2 fixture, F16
# and PVQ 3.25); GPU against CPU logits with float32 activations on both sides (tolerance 1e-3, greedy
# partings accepted only at CPU near-ties, top-2 margin < 0.05); compute-sanitizer memcheck judged by its
# own error count; the PVQ GEMV against the device copy and torch fp16, decode tokens/s of a
# Llama-7B-shaped PVQ model.  Every log and summary.txt go to OUT_DIR; the whole run stops itself within
# GPU_CHECK_SECONDS (default 540: 9 minutes), each step's timeout taken from what remains.
# --dry: build and make the models only (no GPU needed; GPU_CHECK_LAYERS / GPU_CHECK_VOCAB shrink the
# SmolLM2 shape for that).  Exit status 0 only when every step passed and every goal was met.
set -u
[ $# -ge 1 ] || { echo "usage: bash bench/gpu_check.sh OUT_DIR [--dry]" >&2; exit 2; }
mkdir -p "$1" && OUT=$(cd "$1" && pwd) || exit 2
DRY=$([ "${2:-}" = --dry ] && echo 1 || echo 0)
cd "$(dirname "$0")/.."
DEADLINE=$((SECONDS + ${GPU_CHECK_SECONDS:-540}))
EXE=runtime/build-cuda/pvq-cuda
SUMMARY=$OUT/summary.txt
MODELS=$OUT/models
SANITIZER=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
PROMPTS=("Once upon a time" "The capital of France is" "def fibonacci(n):")
failed=() missed=()
: > "$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME MAX_SECONDS COMMAND...: runs COMMAND with a timeout of MAX_SECONDS or what is left before the
# deadline (less 10 s for the summary), logs to OUT/NAME.log, records PASS / FAIL / TIMEOUT / SKIPPED
# (with own_verdict=1 only TIMEOUT / SKIPPED: the caller judges the log).
step() {
    local name=$1 max=$2; shift 2
    local left=$((DEADLINE - SECONDS - 10))
    if [ "$left" -lt 5 ]; then note "SKIPPED $name (the 9-minute deadline)"; failed+=("$name"); return 1; fi
    [ "$max" -lt "$left" ] && left=$max
    echo "=== $name (timeout ${left}s): $*"
    local t0=$SECONDS
    timeout -k 5 "$left" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    if [ "$rc" -ne 124 ] && [ "$rc" -ne 137 ] && [ "${own_verdict:-0}" = 1 ]; then return 0; fi
    if [ "$rc" -eq 0 ]; then note "PASS    $name ($((SECONDS - t0)) s)"; return 0; fi
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then note "TIMEOUT $name after ${left} s"
    else note "FAIL    $name: exit $rc ($OUT/$name.log)"; fi
    failed+=("$name")
    return 1
}

# memcheck NAME COMMAND...: compute-sanitizer's verdict is its own "ERROR SUMMARY: N errors" line,
# whatever the checked command's exit status (a compare may miss a tolerance without a memory error).
memcheck() {
    local name=$1; shift
    own_verdict=1 step "$name" 180 "$SANITIZER" --tool memcheck "$@" || return 1
    local line; line=$(grep -o "ERROR SUMMARY: [0-9]* error" "$OUT/$name.log" | tail -1)
    if [ "$line" = "ERROR SUMMARY: 0 error" ]; then note "PASS    $name: ${line}s"; return 0; fi
    note "FAIL    $name: ${line:-no ERROR SUMMARY line}"
    failed+=("$name")
    return 1
}

finish() {
    note ""
    note "steps failed: ${failed[*]:-none}; goals missed: ${missed[*]:-none}; $SECONDS s"
    if [ ${#failed[@]} -eq 0 ] && [ ${#missed[@]} -eq 0 ]; then note "gpu_check: PASSED"; exit 0; fi
    note "gpu_check: FAILED"
    exit 1
}

note "gpu_check $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null)$([ "$DRY" = 1 ] && echo ' (dry: build and models)')"
step build 300 bash -c 'make -C runtime -j"$(nproc)" all && make -C runtime -j"$(nproc)" cuda' || finish
if [ "$DRY" = 0 ]; then
    step info 30 "$EXE" info || { note "no usable GPU: $(head -1 "$OUT/info.log"); nothing else can run"; finish; }
    step selftest 120 "$EXE" selftest
fi
if step python-modules 60 python3 -c "import numpy, torch, gguf, safetensors, scipy, tqdm"; then
    dev=$(python3 -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo cpu)
    step models 240 python3 bench/gpu_models.py "$MODELS" --device "$dev" \
        --layers "${GPU_CHECK_LAYERS:-30}" --vocab "${GPU_CHECK_VOCAB:-49152}"
else
    note "        the test models need those modules: $(tail -1 "$OUT/python-modules.log")"
fi
[ "$DRY" = 1 ] && finish

# GPU against CPU, float32 activations on both sides
for model in smol/f16 smol/pvq-3.25 qwen2/f16 qwen2/pvq-3.25; do
    [ -f "$MODELS/$model.gguf" ] || { note "FAIL    compare-${model/\//-}: no model file"; failed+=("compare-$model"); continue; }
    n_prompts=$([ "${model%%/*}" = smol ] && echo 3 || echo 1)
    for ((i = 0; i < n_prompts; i++)); do
        step "compare-${model/\//-}-$i" 90 "$EXE" compare -m "$MODELS/$model.gguf" -p "${PROMPTS[$i]}" -n 32 \
            --tol 1e-3 --f32-act --near-tie 0.05
        grep -h "parting\|^worst" "$OUT/compare-${model/\//-}-$i.log" | sed 's/^/        /' | tee -a "$SUMMARY"
    done
done

step bench-gemv 120 "$EXE" bench-gemv --reps 100
step bench-torch-fp16 60 python3 bench/gpu_torch_fp16.py "$OUT/bench-gemv.log"
step bench-decode-3.25 90 "$EXE" bench-decode --bpw 3.25 -n 256
# the goals at 3.25 bpw, 4096 x 14336 (rows x columns as bench-gemv prints them), from this run's logs
share=$(awk '$1 == "3.25" && $2 == "4096x14336" {sub("%", "", $5); print $5}' "$OUT/bench-gemv.log" 2>/dev/null)
speed=$(awk '$1 == "4096x14336" {sub("x", "", $4); print $4}' "$OUT/bench-torch-fp16.log" 2>/dev/null)
note "GEMV 3.25 bpw 4096x14336: $(grep -h "device copy" "$OUT/bench-gemv.log" 2>/dev/null)"
note "        ${share:-?} % of the copy bandwidth (goal >= 70), ${speed:-?}x torch fp16 (goal >= 3.5)"
awk -v s="${share:-0}" 'BEGIN { exit !(s >= 70) }' || missed+=("GEMV >= 70% of copy")
awk -v s="${speed:-0}" 'BEGIN { exit !(s >= 3.5) }' || missed+=("GEMV >= 3.5x torch fp16")
note "decode: $(grep -h "tokens/s" "$OUT/bench-decode-3.25.log" 2>/dev/null)"

if [ -x "$SANITIZER" ]; then
    memcheck memcheck-selftest "$EXE" selftest
    memcheck memcheck-forward-qwen2-pvq "$EXE" compare -m "$MODELS/qwen2/pvq-3.25.gguf" -p "${PROMPTS[0]}" -n 4
    memcheck memcheck-forward-smol-pvq "$EXE" compare -m "$MODELS/smol/pvq-3.25.gguf" -p "${PROMPTS[0]}" -n 2
else
    note "FAIL    memcheck: compute-sanitizer not found"; failed+=("memcheck")
fi
step bench-decode-4.25 90 "$EXE" bench-decode --bpw 4.25 -n 256
finish
