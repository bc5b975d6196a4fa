"""Bad input to the converter: one clear message, a non-zero exit, and no output file left behind."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "pvq_convert", *map(str, args), "-q"],
                          capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture
def model_copy(spm_model_dir, tmp_path):
    d = tmp_path / "model"
    shutil.copytree(spm_model_dir, d)
    return d


def assert_fails_cleanly(result, out_dir, fragment):
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not any(p.suffix in (".gguf", ".partial") for p in out_dir.iterdir()), list(out_dir.iterdir())


def test_missing_config(model_copy, tmp_path):
    (model_copy / "config.json").unlink()
    assert_fails_cleanly(run_cli(model_copy, "-o", tmp_path / "o.gguf"), tmp_path, "no config.json")


@pytest.mark.parametrize("quant", [[], ["--bits", "3.25"]])
def test_unsupported_architecture(model_copy, tmp_path, quant):
    cfg = json.loads((model_copy / "config.json").read_text())
    cfg["architectures"] = ["GPTNeoXForCausalLM"]
    (model_copy / "config.json").write_text(json.dumps(cfg))
    assert_fails_cleanly(run_cli(model_copy, "-o", tmp_path / "o.gguf", *quant), tmp_path, "unsupported architecture")


def test_truncated_safetensors(model_copy, tmp_path):
    st = model_copy / "model.safetensors"
    os.truncate(st, st.stat().st_size - 1000)
    assert_fails_cleanly(run_cli(model_copy, "-o", tmp_path / "o.gguf"), tmp_path, "truncated")


def test_tokenizer_larger_than_vocab(model_copy, tmp_path):
    from models.spm_fixture import random_weights
    from safetensors.numpy import save_file

    cfg = json.loads((model_copy / "config.json").read_text())
    cfg["vocab_size"] -= 100
    (model_copy / "config.json").write_text(json.dumps(cfg))
    save_file(random_weights(cfg, cfg["vocab_size"]), model_copy / "model.safetensors")
    assert_fails_cleanly(run_cli(model_copy, "-o", tmp_path / "o.gguf"), tmp_path, "vocab_size")


def test_unwritable_output(model_copy, tmp_path):
    assert_fails_cleanly(run_cli(model_copy, "-o", tmp_path / "no" / "such" / "dir" / "o.gguf"),
                         tmp_path, "does not exist")
    # /proc refuses new files even to root, unlike a directory's mode bits.
    assert_fails_cleanly(run_cli(model_copy, "-o", "/proc/o.gguf"), tmp_path, "cannot write")


def test_output_on_a_file_path_fails_and_keeps_the_file(model_copy, tmp_path):
    """A path whose parent is a regular file cannot be written; the user's file stays as it was."""
    blocker = tmp_path / "blocker"
    blocker.write_text("user data")
    result = run_cli(model_copy, "-o", blocker / "o.gguf")
    assert result.returncode == 1 and result.stderr.startswith("error: ")
    assert blocker.read_text() == "user data"


def test_kill_leaves_no_partial_output(smollm2, tmp_path):
    """SIGTERM in the middle of writing removes the temporary file; an earlier output is kept."""
    out = tmp_path / "o.gguf"
    out.write_bytes(b"previous")
    proc = subprocess.Popen([sys.executable, "-m", "pvq_convert", str(smollm2.hf_dir), "--outtype", "f32",
                             "-o", str(out), "-q"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.suffix == ".partial" for p in tmp_path.iterdir()):
        time.sleep(0.05)
    assert proc.poll() is None, "conversion finished before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "no output written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.gguf"]
    assert out.read_bytes() == b"previous"


def test_help():
    r = subprocess.run([sys.executable, "-m", "pvq_convert", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--outtype" in r.stdout
