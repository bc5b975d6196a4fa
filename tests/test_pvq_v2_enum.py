"""The candidate version 2 enumeration of P(8, K) (bench/pvq_v2_enum.py, bench/pvq_v2_decode.c): a bijection onto
the pyramid, the Python and C references giving the same points, and the AVX-512 decoder giving the reference's
points and products on random rows (on CPUs that run it)."""
from __future__ import annotations

import random
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import pvq_v2_enum as v2  # noqa: E402

from pvq_clib import Kernels  # noqa: E402

PRESETS = [(6, 15, 3), (10, 20, 2), (14, 23, 3), (22, 27, 3), (29, 30, 4), (32, 31, 5)]


@pytest.fixture(scope="module")
def tool(tmp_path_factory):
    exe = tmp_path_factory.mktemp("v2") / "pvq_v2_decode"
    kernels = ROOT / "runtime" / "src" / "kernels"
    subprocess.run(["cc", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{kernels}", f"-I{ROOT / 'runtime' / 'src'}",
                    str(ROOT / "bench" / "pvq_v2_decode.c"), *map(str, sorted(kernels.glob("pvq_*.c"))),
                    str(kernels / "isa.c"), "-lm", "-o", str(exe)], check=True)
    return exe


@lru_cache(maxsize=None)
def pyramid(d, k):
    return 1 if k == 0 else 0 if d == 0 else pyramid(d - 1, k) + pyramid(d, k - 1) + pyramid(d - 1, k - 1)


@pytest.mark.parametrize("K,B", [(1, 8), (2, 8), (3, 10), (4, 12), (5, 14)])
def test_python_bijection(K, B):
    points = {}
    for idx in range(1 << B):
        y = v2.decode(idx, K, B)
        if y is None:
            continue
        assert sum(map(abs, y)) == K and y not in points
        points[y] = idx
        assert v2.encode(y, K, B) == idx
    assert len(points) == pyramid(8, K)


def test_c_bijection(tool):
    out = subprocess.run([str(tool), "check"], capture_output=True, text=True, check=True).stdout
    assert out.count("bijection") == 10, out


@pytest.mark.parametrize("K,B,b", PRESETS)
def test_python_and_c_agree(tool, K, B, b):
    rng = random.Random(K)
    sizes, bases = v2.class_bases(K, B)
    # every class's first and last code, the first padding code, and random codes over the whole field
    idx = [bases[k] for k in range(K + 1)] + [bases[k] + sizes[k] - 1 for k in range(K + 1)]
    idx += [bases[k] + sizes[k] for k in range(K + 1)] + [rng.randrange(1 << B) for _ in range(3000)]
    out = subprocess.run([str(tool), "points", str(K), str(B)], input="\n".join(map(str, idx)), capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert len(out) == len(idx)
    for i, line in zip(idx, out):
        y = v2.decode(i, K, B)
        assert line == ("invalid" if y is None else " ".join(map(str, y))), i
        if y is not None:
            assert v2.encode(y, K, B) == i
    assert sum(line != "invalid" for line in out) > 0.5 * 3000 * pyramid(8, K) / (1 << B)   # the checks ran on points


def test_rate_unchanged():
    """The padded classes fit the version 1 field of every preset: B bits, the bit length of N(8, K) - 1."""
    for K, B, _ in PRESETS:
        assert (pyramid(8, K) - 1).bit_length() == B
        assert v2.class_bases(K, B)[1][-1] <= 1 << B


@pytest.mark.parametrize("K,b,n", [(14, 3, 576), (29, 4, 576), (6, 3, 1536), (10, 2, 640)])
def test_avx512_decoder(tool, K, b, n):
    """Every step of random rows decoded by the kernel as the reference decodes it, products within 1e-5."""
    if not Kernels().avx512:
        pytest.skip("this CPU does not run the AVX-512 VBMI kernel set")
    r = subprocess.run([str(tool), "bench", str(K), str(b), str(n), "96", "1"], capture_output=True, text=True)
    assert r.returncode == 0 and "v2" in r.stdout, r.stdout + r.stderr


def test_avx512_decoder_refuses_dense_classes(tool):
    """K = 22 leaves no room to pad its classes: one correction after the bucket is not enough there."""
    r = subprocess.run([str(tool), "bench", "22", "3", "576", "8", "1"], capture_output=True, text=True)
    assert r.returncode == 2 and "narrower than a bucket" in r.stderr
