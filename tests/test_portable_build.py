"""One portable build: only the kernel files use AVX registers, pvqrun runs every kernel set the CPU has when
forced to (the same binary an AVX-512 machine would build runs on an AVX2 or older CPU by the same choice),
and a set the CPU lacks, or an unknown one, is a clear error."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from runtime_clib import RUNTIME, build_dir, cpu_isas, run_pvqrun, tiny_gguf

# built for their instruction set (runtime/Makefile's ISA_FLAGS, or target attributes in the PVQ kernels)
KERNEL_OBJECTS = {"avx2.o", "avx512.o", "hadamard_avx2.o", "pvq_avx2.o", "pvq_avx512.o", "pvq_repack.o"}


def test_baseline_objects_use_no_avx():
    """Every object but the kernel files disassembles without a ymm/zmm register or a VEX/EVEX instruction:
    what runs before a kernel set is chosen runs on any x86-64."""
    build_dir()
    objs = sorted((RUNTIME / "build" / "obj").rglob("*.o"))
    assert len(objs) > 15
    for obj in objs:
        if obj.name in KERNEL_OBJECTS:
            continue
        asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(obj)], capture_output=True, text=True,
                             check=True).stdout
        bad = [l for l in asm.splitlines() if re.search(r"%[yz]mm\d|\bv(fmadd|cvtph2ps|cvtps2ph|pbroadcast|perm)", l)]
        assert not bad, f"{obj.name}: {bad[:3]}"


@pytest.mark.parametrize("isa", cpu_isas())
def test_pvqrun_runs_each_kernel_set(tmp_path, isa):
    model = tiny_gguf(tmp_path / "tiny.gguf", wtype="q8_0")
    for args, env in ((["--isa", isa], {}), ([], {"PVQ_ISA": isa})):
        r = subprocess.run([str(build_dir() / "pvqrun"), "-m", str(model), "-p", "the", "-n", "4", "--temp", "0",
                            "-v", *args], capture_output=True, env={**os.environ, **env}, timeout=120)
        assert r.returncode == 0, r.stderr.decode()
        assert f"kernel set {isa}".encode() in r.stderr, r.stderr.decode()


def test_unavailable_or_unknown_kernel_set_is_a_clear_error(tmp_path):
    model = tiny_gguf(tmp_path / "tiny.gguf")
    missing = [s for s in ("avx2", "avx512") if s not in cpu_isas()]
    for name in missing:
        r = run_pvqrun(["-m", model, "-p", "the", "-n", "1", "--isa", name])
        assert r.returncode == 2 and f"kernel set {name} needs instructions this CPU lacks".encode() in r.stderr, \
            r.stderr.decode()
    r = run_pvqrun(["-m", model, "-p", "the", "-n", "1", "--isa", "sse9"])
    assert r.returncode == 2 and b"unknown kernel set 'sse9' (choose scalar, avx2, avx512 or auto)" in r.stderr
    r = subprocess.run([str(build_dir() / "pvqrun"), "-m", str(model), "-p", "the", "-n", "1"], capture_output=True,
                       env={**os.environ, "PVQ_ISA": "sse9"}, timeout=60)
    assert r.returncode == 1 and b"PVQ_ISA: unknown kernel set 'sse9'" in r.stderr, r.stderr.decode()
