"""libpvq.so exports pvq.h's API and nothing else, so a program that also loads llama.cpp's ggml (whose
libggml-base exports gguf_find_tensor, gguf_get_val_u32, ... of its own) cannot bind libpvq's internal calls
to ggml's functions of the same names."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

from runtime_clib import RUNTIME, build_dir, tiny_gguf


def _public_names() -> set[str]:
    header = re.sub(r"/\*.*?\*/", "", (RUNTIME / "include" / "pvq.h").read_text(), flags=re.S)
    return set(re.findall(r"^PVQ_API\b[^(;]*?\b(pvq_\w+)\s*\(", header, flags=re.M))


def test_only_the_public_api_is_exported():
    lib = build_dir() / "libpvq.so"
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.split()[1] in "TDBRVWi"}
    public = _public_names()
    assert len(public) > 30 and "pvq_model_load" in public and "pvq_set_isa" in public
    assert exported == public, (sorted(exported - public), sorted(public - exported))


def test_loads_beside_ggml_loaded_globally(tmp_path):
    """llama.cpp's libggml-base.so loaded first with RTLD_GLOBAL (as a program embedding both may do), then
    libpvq: a model loads and generates."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from pathlib import Path
    ggml = Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"
    model = tiny_gguf(tmp_path / "tiny.gguf")
    script = textwrap.dedent(f"""
        import ctypes, sys
        ggml = ctypes.CDLL({str(ggml)!r}, mode=ctypes.RTLD_GLOBAL)
        assert ggml.gguf_find_tensor  # the clashing name is there, global
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from runtime_clib import Model
        m = Model({str(model)!r}, n_ctx=32, n_threads=1)
        print("tokens", m.greedy(m.tokenize("the"), 4))
        m.close()
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.startswith("tokens [")
