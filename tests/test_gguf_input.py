"""GGUF input (pvq_convert.gguf_in): a llama.cpp file read as a checkpoint.  The reference is the other direction:
our writer (convert.py, vocab.py) makes the GGUF from a Hugging Face directory, the reader must give that
directory back: the same float32 tensors, hyper-parameters and token ids; converting either gives the same file."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from models import code_text


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pvq_convert", *map(str, args), "-q"],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def qwen2_dir(smollm2, tmp_path_factory):
    from models.qwen2_fixture import build
    return build(tmp_path_factory.mktemp("qwen2"), smollm2.hf_dir)


def assert_reads_back(hf_dir, gguf_path, text):
    from tokenizers import Tokenizer

    from pvq_convert.hf_model import open_model
    a, b = open_model(hf_dir), open_model(gguf_path)
    assert b.arch == a.arch and list(b.tensors) == [n for n in a.tensors if not n.endswith("inv_freq")]
    for name in b.tensors:      # every tensor, in HF's row layout (llama's Q/K rows permuted back)
        assert np.array_equal(b.load(name), a.load(name)), name
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "rms_norm_eps", "rope_theta", "vocab_size", "max_position_embeddings")
    assert {k: b.config[k] for k in keys} == {k: a.config[k] for k in keys}
    assert b.config["tie_word_embeddings"] == ("lm_head.weight" not in a.tensors)
    ids = Tokenizer.from_file(str(b.dir / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    assert ids == Tokenizer.from_file(str(a.dir / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    return b


@pytest.mark.parametrize("model", ["qwen2", "smollm2"])
def test_gguf_reads_back_as_the_checkpoint(model, qwen2_dir, smollm2, eval_text, tmp_path):
    """qwen2 (biases, untied head, NEOX RoPE) and SmolLM2 (llama: Q/K rows permuted in the file, tied head)."""
    hf_dir = qwen2_dir if model == "qwen2" else smollm2.hf_dir
    f32 = tmp_path / "m.gguf"
    r = run_cli(hf_dir, "--outtype", "f32", "-o", f32)
    assert r.returncode == 0, r.stderr
    b = assert_reads_back(hf_dir, f32, eval_text[:20000] + code_text()[:20000])
    assert b.name == "m" and "chat_template" in (b.dir / "tokenizer_config.json").read_text()
    # file_model (what the runtime's --pvq-f32-act is compared with) reads the same file as the same model
    import torch

    from pvq_convert.gguf_in import file_model
    from pvq_convert.torch_model import load_model
    ids = list(range(100, 132))
    with torch.no_grad():
        want, got = load_model(hf_dir)(ids), file_model(f32, hf_dir)(ids)
    assert torch.allclose(got, want, rtol=0, atol=1e-4 * want.abs().max()), (got - want).abs().max()


def test_converting_a_gguf_equals_converting_its_checkpoint(qwen2_dir, tmp_path):
    import gguf

    from pvq_convert.pvq_format import register_gguf_types
    register_gguf_types()
    f32 = tmp_path / "q.gguf"
    assert run_cli(qwen2_dir, "--outtype", "f32", "-o", f32).returncode == 0
    outs = []
    for src in (qwen2_dir, f32):
        out = tmp_path / f"pvq-{len(outs)}.gguf"
        r = run_cli(src, "--bits", "3.25", "--calib-seqs", "2", "--calib-len", "64", "-o", out)
        assert r.returncode == 0, r.stderr
        outs.append(gguf.GGUFReader(out))
    a, b = outs
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for ta, tb in zip(a.tensors, b.tensors):
        assert ta.tensor_type == tb.tensor_type and np.array_equal(ta.data, tb.data), ta.name
    fields = lambda r: {k: f.contents() for k, f in r.fields.items() if k not in ("general.name",) and not k.startswith("GGUF.")}  # noqa: E731
    assert fields(a) == fields(b)


def test_default_output_lies_beside_the_gguf(qwen2_dir, tmp_path):
    src = tmp_path / "tiny.gguf"
    assert run_cli(qwen2_dir, "--outtype", "f32", "-o", src).returncode == 0
    r = run_cli(src, "--outtype", "f16")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "tiny-F16.gguf").is_file()


def test_bad_gguf_inputs(qwen2_dir, spm_model_dir, tmp_path):
    from test_convert_errors import assert_fails_cleanly
    src = tmp_path / "src.gguf"
    assert run_cli(qwen2_dir, "--outtype", "f16", "-o", src).returncode == 0
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cut = out_dir.parent / "cut.gguf"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    assert_fails_cleanly(run_cli(cut, "-o", out_dir / "o.gguf"), out_dir, "truncated or corrupt")
    junk = out_dir.parent / "junk.gguf"
    junk.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    assert_fails_cleanly(run_cli(junk, "-o", out_dir / "o.gguf"), out_dir, "not a readable GGUF file")
    spm = out_dir.parent / "spm.gguf"
    assert run_cli(spm_model_dir, "--outtype", "f16", "-o", spm).returncode == 0
    assert_fails_cleanly(run_cli(spm, "-o", out_dir / "o.gguf"), out_dir, "only byte-level BPE")
    r = run_cli(src, "-o", src)
    assert r.returncode == 1 and "is the input file" in r.stderr and src.stat().st_size > 0
