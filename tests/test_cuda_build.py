"""The CUDA backend where no GPU is needed: the host-side planning and decode code (the rule the kernels
run, checked bit for bit against the codec's reference), `make cuda` compiling and linking with nvcc,
and pvq-cuda saying clearly that no usable device exists and running on the CPU instead. The GPU checks
themselves are bench/gpu_check.sh (docs/cuda.md)."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from runtime_clib import RUNTIME, run_pvqrun

BUILD = RUNTIME / "build-cuda"
PROMPTS = ["Once upon a time", "The capital of France is", "def fibonacci(n):"]


def _make(target):
    return subprocess.run(["make", "-s", "-C", str(RUNTIME), target], capture_output=True, text=True, timeout=1800)


def test_host_plan_and_decode_checks():
    """Plain C: builds without the CUDA toolkit."""
    r = _make("cuda-host")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = subprocess.run([str(BUILD / "test_cuda_plan")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout
    lines = r.stdout.splitlines()
    assert not [l for l in lines if l.startswith("FAIL")]
    # every layout of the test ran: the three presets' fast path, the generic path, the plans
    assert sum(l.startswith("ok") and "bit-identical to pvq_ref" in l for l in lines) == 8
    assert sum("generic path on a fast layout" in l for l in lines) == 3
    assert sum("the GEMV's regrouped dot" in l for l in lines) == 8
    assert sum("int8 activations identical to pvq_quantize_x_q8's" in l for l in lines) == 5
    assert sum(l.startswith("ok") and "tile scale" in l for l in lines) == 1
    assert lines[-1] == "all host checks passed"


@pytest.fixture(scope="module")
def pvq_cuda():
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed: the CUDA build cannot be tried here")
    r = _make("cuda")
    assert r.returncode == 0, f"make cuda failed with nvcc present:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    exe = BUILD / "pvq-cuda"
    assert exe.is_file() and (BUILD / "libpvq_cuda.so").is_file()
    return exe


def test_binaries_link(pvq_cuda):
    ldd = subprocess.run(["ldd", str(pvq_cuda)], capture_output=True, text=True, check=True).stdout
    assert "not found" not in ldd, ldd
    for lib in ("libpvq_cuda.so", "libpvq_internal.so", "libcudart.so"):  # the runtime with its internals
        assert lib in ldd, ldd
    syms = subprocess.run(["nm", "-D", "--defined-only", str(BUILD / "libpvq_cuda.so")], capture_output=True,
                          text=True, check=True).stdout
    for name in ("pvq_cuda_probe", "pvq_cuda_model_load", "pvq_cuda_forward", "pvqk_gemv", "pvqk_matmul_mma",
                 "k_attention", "k_hadamard", "pvq_cuda_selftest", "pvq_cuda_bench_gemv"):
        assert f" T {name}\n" in syms, name


def _run(exe, *args, timeout=600):
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def no_device(pvq_cuda):
    r = _run(pvq_cuda, "info")
    assert r.returncode in (0, 3), r.stdout + r.stderr
    if r.returncode == 0:
        pytest.skip(f"a usable GPU is present ({r.stdout.strip()}): run bench/gpu_check.sh for the GPU checks")
    return r.stdout.strip()


def test_info_says_why_there_is_no_device(pvq_cuda, no_device):
    assert no_device.startswith("no CUDA device: ") and "cudaGetDeviceCount" in no_device


@pytest.mark.parametrize("cmd", [["selftest"], ["bench-gemv"], ["bench-decode"],
                                 ["compare", "-m", "MODEL", "-p", "hi"],
                                 ["compare", "-m", "MODEL", "-p", "hi", "--f32-act", "--near-tie", "0.05"]])
def test_gpu_only_commands_refuse_cleanly(pvq_cuda, no_device, smollm2, cmd):
    r = _run(pvq_cuda, *[smollm2.f16_gguf if a == "MODEL" else a for a in cmd])
    assert r.returncode == 3, r.stdout + r.stderr
    assert "no CUDA device" in r.stderr and "needs a GPU" in r.stderr


def test_generate_falls_back_to_the_cpu_with_the_cpu_runtime_s_tokens(pvq_cuda, no_device, smollm2):
    for prompt in PROMPTS:
        r = _run(pvq_cuda, "generate", "-m", smollm2.f16_gguf, "-p", prompt, "-n", 12, "--print-token-ids")
        assert r.returncode == 0, r.stderr
        assert "no CUDA device" in r.stderr and "running on the CPU" in r.stderr, r.stderr
        ref = run_pvqrun(["-m", smollm2.f16_gguf, "-p", prompt, "-n", 12, "--temp", 0, "-t", 2, "--print-token-ids"])
        assert ref.returncode == 0, ref.stderr.decode()[-2000:]
        assert r.stdout.split("\n")[:2] == ref.stdout.decode().split("\n")[:2]


def test_ngl_0_runs_on_the_cpu_and_prints_text(pvq_cuda, smollm2):
    """-ngl 0 asks for the CPU: no device probe, no fallback message, the CPU runtime's text."""
    prompt = "The capital of France is"
    r = _run(pvq_cuda, "generate", "-m", smollm2.f16_gguf, "-p", prompt, "-n", 8, "-ngl", 0)
    assert r.returncode == 0, r.stderr
    assert "generating on the CPU" in r.stderr and "no CUDA device" not in r.stderr
    ref = run_pvqrun(["-m", smollm2.f16_gguf, "-p", prompt, "-n", 8, "--temp", 0, "-t", 2])
    assert ref.returncode == 0
    assert r.stdout == ref.stdout.decode()


def test_bad_input_is_an_error_not_a_crash(pvq_cuda, smollm2, tmp_path):
    cases = [
        (["generate", "-m", tmp_path / "missing.gguf", "-p", "hi"], "cannot open"),
        (["generate", "-m", smollm2.f16_gguf, "-p", "hi", "-ngl", 7], "offloads part of the 30 layers"),
        (["generate", "-m", smollm2.f16_gguf], "needs -m MODEL and -p PROMPT"),
        (["bench-decode", "--bpw", "3.5"], "--bpw is 3.25 or 4.25"),
        (["generate", "-n", "x"], "-n expects a number"),
        (["compare", "-m", smollm2.f16_gguf, "-p", "hi", "--near-tie", "x"], "--near-tie expects a number"),
        (["frobnicate"], "unknown command"),
    ]
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\x00" * 60)
    cases.append((["generate", "-m", tmp_path / "junk.gguf", "-p", "hi"], "error: "))
    for args, msg in cases:
        r = _run(pvq_cuda, *args)
        assert r.returncode == 2, f"{args}: exit {r.returncode}\n{r.stderr}"
        assert msg in r.stderr, f"{args}: {r.stderr}"


GPU_CHECK = RUNTIME.parent / "bench" / "gpu_check.sh"


def _gpu_check(out, *args, env=None):
    r = subprocess.run(["bash", str(GPU_CHECK), str(out), *args], capture_output=True, text=True, timeout=900,
                       env=env)
    return r, (out / "summary.txt").read_text()


def test_gpu_check_without_a_gpu_stops_with_the_reason(pvq_cuda, no_device, tmp_path):
    """The check builds (two sequential makes), then says why nothing else can run, in its summary."""
    r, summary = _gpu_check(tmp_path)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert "PASS    build" in summary and "no usable GPU: no CUDA device: " in summary, summary
    assert summary.rstrip().endswith("gpu_check: FAILED"), summary
    assert (tmp_path / "build.log").is_file() and (tmp_path / "info.log").is_file()


def test_gpu_check_dry_run_makes_its_own_models(pvq_cuda, tmp_path):
    """--dry: the build and the model-making step (SmolLM2 widths, 1 layer and a 2048-token vocabulary
    here) from the repository alone; the CPU runtime loads and runs every model it makes."""
    env = dict(os.environ, GPU_CHECK_LAYERS="1", GPU_CHECK_VOCAB="2048")
    r, summary = _gpu_check(tmp_path, "--dry", env=env)
    assert r.returncode == 0, summary + r.stdout[-3000:]
    for step in ("build", "python-modules", "models"):
        assert f"PASS    {step}" in summary, summary
    for model in ("smol/f16", "smol/pvq-3.25", "qwen2/f16", "qwen2/pvq-3.25"):
        path = tmp_path / "models" / f"{model}.gguf"
        ref = run_pvqrun(["-m", path, "-p", PROMPTS[1], "-n", 4, "--temp", 0, "-t", 2, "--print-token-ids"])
        assert ref.returncode == 0, ref.stderr.decode()[-2000:]
        assert len(ref.stdout.decode().split("\n")[1].split()) == 4, ref.stdout
