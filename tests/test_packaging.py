"""`pip install .` as a user runs it: a fresh virtual environment, a non-editable install from the repository,
then the bindings and pvqrun from outside the repository, with numpy, cffi and jinja2 as the only
dependencies (no torch: the converter's dependencies are the `convert` extra)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(ROOT)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return venv


def test_install_runs_the_bindings_and_pvqrun(fresh_venv, smollm2, tmp_path):
    py = fresh_venv / "bin" / "python"
    script = textwrap.dedent(f"""
        import importlib.util, json
        import pvq
        from pvq import Llama
        llm = Llama({str(smollm2.f16_gguf)!r}, n_ctx=128, n_threads=2, verbose=False)
        out = llm("The capital of France is", max_tokens=6, temperature=0)
        print(json.dumps({{"lib": str(pvq.LIB_PATH), "text": out["choices"][0]["text"],
                          "torch": importlib.util.find_spec("torch") is not None,
                          "pvq_file": pvq.__file__}}))
    """)
    r = subprocess.run([str(py), "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert Path(got["lib"]).is_relative_to(fresh_venv) and Path(got["pvq_file"]).is_relative_to(fresh_venv), got
    assert not got["torch"], "the bindings' install pulled torch"
    assert "Paris" in got["text"], got
    r = subprocess.run([str(fresh_venv / "bin" / "pvqrun"), "--help"], capture_output=True, text=True, cwd=tmp_path,
                       timeout=60)
    assert r.returncode == 0 and "usage: pvqrun" in r.stdout, r.stderr
    deps = subprocess.run([str(py), "-m", "pip", "list", "--format=json"], capture_output=True, text=True,
                          check=True).stdout
    names = {p["name"].lower() for p in json.loads(deps)}
    assert names - {"pip", "setuptools", "wheel"} <= {"pvq", "numpy", "cffi", "pycparser", "jinja2", "markupsafe"}, \
        names
