#!/usr/bin/env bash
# The CUDA backend's checks on a GPU machine (H100/H200 class), in one run (docs/cuda.md):
#   build; device report; kernel self test; CUDA-vs-CPU logits and greedy continuations for 3 prompts
#   on SmolLM2 F16 and SmolLM2 PVQ; the converter's Triton search; PVQ GEMV bandwidth vs the device copy
#   bandwidth and vs torch's fp16 matmul at batch 1; decode tokens/s of a Llama-7B-shaped PVQ model;
#   compute-sanitizer memcheck (last: the slowest).
# Environment: F16_GGUF, PVQ_GGUF (SmolLM2 files, F16_GGUF=none skips that file; PVQ_GGUF is made with
#   pvq_convert from HF_DIR, the HF directory in $PVQ_CACHE, when missing, calibrated as the tests' PVQ
#   model is: models/smollm2.py calibration_text, from PVQ_SHARED_DATA), TOL and PVQ_TOL
#   (logit tolerances of the two files, default 1e-2 and 3e-2), ONLY (space-separated step-name prefixes
#   to run, e.g. ONLY="selftest bench-gemv"; build and info always run), LOG_DIR (logs, default
#   /tmp/pvq-gpu-check).  Exit status 0 only when every step passed; each step's log is in $LOG_DIR.
set -u
cd "$(dirname "$0")/.."
CACHE=${PVQ_CACHE:-$HOME/.cache/pvq}
F16_GGUF=${F16_GGUF:-$CACHE/smollm2-135m-instruct/f16.gguf}
PVQ_GGUF=${PVQ_GGUF:-$CACHE/pvq-cuda/smollm2-pvq-3.25.gguf}
HF_DIR=${HF_DIR:-$CACHE/smollm2-135m-instruct/SmolLM2-135M-Instruct}
TOL=${TOL:-1e-2}          # F16 file: the paths differ in summation orders (same roundings of activations)
PVQ_TOL=${PVQ_TOL:-3e-2}  # PVQ file: prompts go through fp16 tensor-core tiles here, float32 on the CPU
LOG_DIR=${LOG_DIR:-/tmp/pvq-gpu-check}
EXE=runtime/build-cuda/pvq-cuda
SANITIZER=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
PROMPTS=("Once upon a time" "The capital of France is" "def fibonacci(n):")
mkdir -p "$LOG_DIR"
failed=()

step() {   # step NAME COMMAND...: runs, logs to $LOG_DIR/NAME.log, records a failure
    local name=$1; shift
    if [ -n "${ONLY:-}" ] && [ "$name" != build ] && [ "$name" != info ]; then
        local want=0 p
        for p in $ONLY; do case $name in "$p"*) want=1 ;; esac; done
        [ $want = 1 ] || return 0
    fi
    echo "=== $name: $*"
    "$@" > "$LOG_DIR/$name.log" 2>&1
    local rc=$?
    cat "$LOG_DIR/$name.log"
    echo "=== $name: exit $rc"
    [ "$rc" -eq 0 ] || failed+=("$name")
    return "$rc"
}

step build make -C runtime -j"$(nproc)" all cuda || { echo "build failed"; exit 1; }
step info "$EXE" info || { echo "no usable GPU: nothing else can run"; exit 1; }
step selftest "$EXE" selftest

if [ ! -f "$PVQ_GGUF" ] && [ -d "$HF_DIR" ]; then
    mkdir -p "$(dirname "$PVQ_GGUF")"
    calib=$(python3 -c "from models.smollm2 import calibration_text; print(calibration_text())") &&
    step convert-pvq python3 -m pvq_convert "$HF_DIR" --bits 3.25 --calib "$calib" --calib-seqs 8 -q -o "$PVQ_GGUF"
fi
for kind in F16 PVQ; do
    model=$([ $kind = F16 ] && echo "$F16_GGUF" || echo "$PVQ_GGUF")
    [ "$model" = none ] && { echo "=== compare-$kind: skipped ($kind file: none)"; continue; }
    if [ ! -f "$model" ]; then
        echo "=== compare-$kind: model file $model is missing"; failed+=("compare-$kind (no model)"); continue
    fi
    tol=$([ $kind = F16 ] && echo "$TOL" || echo "$PVQ_TOL")
    for i in 0 1 2; do
        step "compare-$kind-$i" "$EXE" compare -m "$model" -p "${PROMPTS[$i]}" -n 32 --tol "$tol"
    done
done

# the converter's Triton PVQ search, native on the GPU, against the torch reference
step triton python3 -m pytest -q -p no:cacheprovider tests/test_pvq_triton.py
step bench-gemv "$EXE" bench-gemv --reps 100
step bench-torch-fp16 python3 bench/gpu_torch_fp16.py "$LOG_DIR/bench-gemv.log"
step bench-decode-3.25 "$EXE" bench-decode --bpw 3.25 -n 256
step bench-decode-4.25 "$EXE" bench-decode --bpw 4.25 -n 256
step bench-decode-3.25-nograph env PVQ_CUDA_GRAPHS=0 "$EXE" bench-decode --bpw 3.25 -n 256

if [ -x "$SANITIZER" ]; then
    step memcheck-selftest timeout 150 "$SANITIZER" --tool memcheck --error-exitcode 99 "$EXE" selftest
    for kind in F16 PVQ; do
        model=$([ $kind = F16 ] && echo "$F16_GGUF" || echo "$PVQ_GGUF")
        [ -f "$model" ] && step "memcheck-forward-$kind" timeout 150 "$SANITIZER" --tool memcheck --error-exitcode 99 \
            "$EXE" compare -m "$model" -p "${PROMPTS[0]}" -n 4 --tol "$PVQ_TOL"
    done
else
    echo "=== memcheck: compute-sanitizer not found"; failed+=("memcheck (no compute-sanitizer)")
fi


if [ ${#failed[@]} -eq 0 ]; then echo "gpu_check: every step passed"; exit 0; fi
echo "gpu_check: FAILED steps: ${failed[*]}"
exit 1
