"""n_gpu_layers as users reach it (pvqrun -ngl, pvq.Llama(n_gpu_layers=...), pvq_context_params): the whole
model on the GPU through the dlopen'ed CUDA backend, or one warning and exactly the CPU's tokens when the
backend library or a usable device is missing; a partial offload refused with the reason. On a machine with a
GPU the -ngl -1 runs may really use it: then they print no warning, and the tokens are compared only as far
as greedy decoding of two arithmetics can be expected to agree (docs/cuda.md)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runtime_clib import RUNTIME, build_dir, run_pvqrun

WARNING = "; running on the CPU"
PROMPT = "Once upon a time"


def _ids(model, ngl, exe=None, env=None):
    """(generated token ids, stderr) of a greedy pvqrun with -ngl ngl."""
    args = ["-m", model, "-p", PROMPT, "-n", 16, "--temp", 0, "-t", 2, "--print-token-ids", "-ngl", ngl]
    if exe is None:
        r = run_pvqrun(args)
    else:
        r = subprocess.run([str(exe), *map(str, args)], capture_output=True, timeout=300, env=env)
    err = r.stderr.decode()
    assert r.returncode == 0, err[-3000:]
    return r.stdout.decode().split("\n")[1].split(), err


def _same_or_gpu(gpu_ids, cpu_ids, err):
    """Exactly the CPU's tokens after the fallback warning; on a GPU (no warning) a parting is not a failure."""
    if WARNING in err:
        assert err.count(WARNING) == 1, err
        assert gpu_ids == cpu_ids
    elif gpu_ids != cpu_ids:
        k = next(i for i, (a, b) in enumerate(zip(gpu_ids + [None], cpu_ids + [None])) if a != b)
        pytest.skip(f"ran on the GPU; greedy parts from the CPU at step {k} (near-ties; bench/gpu_check.sh's compare "
                    f"checks the logits)")


@pytest.fixture(scope="module")
def cpu_ids(smollm2):
    ids, err = _ids(smollm2.f16_gguf, 0)
    assert WARNING not in err and "pvq:" not in err, err
    return ids


@pytest.fixture(scope="module")
def cuda_lib():
    """build-cuda/libpvq_cuda.so, built when nvcc is there (as tests/test_cuda_build.py does)."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed: the CUDA backend cannot be built here")
    r = subprocess.run(["make", "-s", "-C", str(RUNTIME), "cuda"], capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return RUNTIME / "build-cuda" / "libpvq_cuda.so"


def _private_build(tmp_path, *extra):
    """pvqrun and libpvq.so (and extra libraries) copied to tmp_path/build: nothing else next to them, no
    ../build-cuda."""
    d = tmp_path / "build"
    d.mkdir()
    src = build_dir()
    for f in [src / "pvqrun", src / "libpvq.so", *extra]:
        shutil.copy2(f, d)
    return d / "pvqrun"


def test_all_layers_with_the_build_tree_backend(smollm2, cpu_ids, cuda_lib):
    """libpvq.so finds ../build-cuda/libpvq_cuda.so; without a device the backend's detection says why."""
    for ngl in (-1, 999):
        ids, err = _ids(smollm2.f16_gguf, ngl)
        if WARNING in err:
            assert "pvq: no CUDA device: cudaGetDeviceCount failed" in err or "pvq: no usable CUDA device" in err, err
        _same_or_gpu(ids, cpu_ids, err)


def test_no_backend_library_falls_back_once(smollm2, cpu_ids, tmp_path):
    exe = _private_build(tmp_path)
    ids, err = _ids(smollm2.f16_gguf, -1, exe=exe)
    assert err.count(WARNING) == 1, err
    assert f"pvq: no CUDA backend: neither {exe.parent}/libpvq_cuda.so nor" in err and "make cuda" in err, err
    assert ids == cpu_ids


def test_backend_named_by_env_that_cannot_load(smollm2, cpu_ids, tmp_path):
    env = dict(os.environ, PVQ_CUDA_LIB=str(tmp_path / "missing.so"))
    ids, err = _ids(smollm2.f16_gguf, -1, exe=build_dir() / "pvqrun", env=env)
    assert err.count(WARNING) == 1 and "pvq: cannot load the CUDA backend (PVQ_CUDA_LIB): " in err, err
    assert ids == cpu_ids


def test_library_without_the_backend_table(smollm2, cpu_ids):
    """A library that loads but is no backend (libpvq.so itself): refused by its missing table."""
    env = dict(os.environ, PVQ_CUDA_LIB=str(build_dir() / "libpvq.so"))
    ids, err = _ids(smollm2.f16_gguf, -1, exe=build_dir() / "pvqrun", env=env)
    assert err.count(WARNING) == 1 and "pvq: the CUDA backend has no pvq_cuda_backend_v1 of ABI 1" in err, err
    assert ids == cpu_ids


def test_backend_installed_next_to_libpvq(smollm2, cpu_ids, cuda_lib, tmp_path):
    """An install: libpvq_cuda.so (and the libpvq_internal.so it links) beside libpvq.so."""
    exe = _private_build(tmp_path, cuda_lib, build_dir() / "libpvq_internal.so")
    ids, err = _ids(smollm2.f16_gguf, -1, exe=exe)
    assert "no CUDA backend" not in err and "cannot load" not in err, err
    _same_or_gpu(ids, cpu_ids, err)


@pytest.mark.parametrize("ngl", [1, 29])
def test_partial_offload_is_refused(smollm2, ngl):
    r = run_pvqrun(["-m", smollm2.f16_gguf, "-p", PROMPT, "-n", 4, "-ngl", ngl])
    err = r.stderr.decode()
    assert r.returncode != 0 and not r.stdout
    assert f"n_gpu_layers {ngl}: " in err and "partial offload is not supported" in err and "30 layers" in err, err
    assert WARNING not in err


def test_bad_ngl_values_are_usage_errors(smollm2):
    for v in ("-2", "x"):
        r = run_pvqrun(["-m", smollm2.f16_gguf, "-p", PROMPT, "--n-gpu-layers", v])
        assert r.returncode != 0 and b"--n-gpu-layers expects an integer" in r.stderr, r.stderr


def test_help_documents_ngl():
    out = run_pvqrun(["--help"]).stdout.decode()
    assert "-ngl, --n-gpu-layers N" in out and "Partial offload: refused" in out


def test_bindings_pass_n_gpu_layers_through(smollm2):
    """Own process: the library warns once per process. Two GPU-asking Llamas, one warning, no Python
    warning on top, the CPU's completion."""
    script = textwrap.dedent(f"""
        import json, sys, warnings
        warnings.simplefilter("error")
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from bindings_util import import_pvq
        pvq = import_pvq()
        out = {{}}
        for name, ngl in (("cpu", 0), ("gpu", -1), ("gpu_again", 1000)):
            llm = pvq.Llama({str(smollm2.f16_gguf)!r}, n_ctx=128, n_threads=2, n_gpu_layers=ngl, verbose=False)
            out[name] = llm.create_completion({PROMPT!r}, max_tokens=16, temperature=0)["choices"][0]["text"]
            llm.close()
        print(json.dumps(out))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.splitlines()[-1])
    assert "Warning" not in r.stderr, r.stderr
    if WARNING in r.stderr:
        assert r.stderr.count(WARNING) == 1, r.stderr
        assert out["gpu"] == out["cpu"] and out["gpu_again"] == out["cpu"]
    elif out["gpu"] != out["cpu"]:
        pytest.skip("ran on the GPU; the greedy completion parts from the CPU's (near-ties)")


def test_bindings_refuse_partial_offload(smollm2):
    from bindings_util import import_pvq
    pvq = import_pvq()
    with pytest.raises(pvq.PvqError, match="partial offload is not supported") as e:
        pvq.Llama(str(smollm2.f16_gguf), n_ctx=64, n_threads=1, n_gpu_layers=3, verbose=False)
    assert e.value.status == 4  # PVQ_ERR_ARG
