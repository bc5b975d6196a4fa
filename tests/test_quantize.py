"""The quantization pipeline end to end on the small SentencePiece Llama: the file holds exactly the
weights the pipeline evaluated, and bad requests fail cleanly."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from models import EVAL_TEXT
from pvq_convert.arch import gguf_tensor_name, unpermute_qk
from pvq_convert.convert import convert
from pvq_convert.hf_model import open_model
from pvq_convert.pvq import dequantize_matrix
from pvq_convert.pvq_format import read_pvq_tensors
from pvq_convert.pvq_presets import preset
from pvq_convert.quantize import Method, QuantOptions, quantize_checkpoint


def test_file_holds_the_weights_the_pipeline_used(spm_model_dir, tmp_path):
    torch.manual_seed(0)
    opts = QuantOptions(Method("pvq", preset(3.25), tune_epochs=2, vocab_layout=preset(2.25)), EVAL_TEXT, n_seq=2,
                        seq_len=32)
    hf = open_model(spm_model_dir)
    qm = quantize_checkpoint(hf, opts, progress=False)
    out = convert(spm_model_dir, tmp_path / "m.gguf", "f16", progress=False, quant=opts)
    stored = read_pvq_tensors(out)
    cfg = hf.config
    heads = {"q_proj": cfg["num_attention_heads"], "k_proj": cfg["num_key_value_heads"]}
    # the fixture has its own lm_head: both vocabulary matrices are coded, at their own rate
    assert len(stored) == 7 * cfg["num_hidden_layers"] + 2
    for name in ("embed_tokens.weight", "lm_head.weight"):
        t = stored[gguf_tensor_name(name if name == "lm_head.weight" else "model." + name)]
        assert t.layout == preset(2.25)
        assert torch.equal(dequantize_matrix(t.quantized()), qm.model.globals[name]), name
    for i, block in enumerate(qm.model.blocks):
        for key, w in block.items():
            if not key.endswith("proj.weight"):
                continue
            got = dequantize_matrix(stored[gguf_tensor_name(f"model.layers.{i}.{key}")].quantized())
            kind = key.split(".")[1]
            if kind in heads:
                got = torch.from_numpy(unpermute_qk(got.numpy(), heads[kind]))
            assert torch.equal(got, w), key


def test_scale_tuning_lowers_the_kl_divergence(spm_model_dir):
    """tune.py on a PVQ 2.25 model: the KLD from the unquantized model over the calibration tokens falls, and
    the model's weights stay exactly its codes decoded (with their new fp16 scales)."""
    from pvq_convert.calib import calibration_tokens
    from pvq_convert.quantize import reference_pass
    from pvq_convert.torch_model import load_model
    from pvq_convert.tune import tune_scales
    hf = open_model(spm_model_dir)
    qm = quantize_checkpoint(hf, QuantOptions(Method("pvq", preset(2.25)), EVAL_TEXT, n_seq=2, seq_len=64),
                             progress=False)
    calib = calibration_tokens(spm_model_dir, EVAL_TEXT, 2, 64)
    # the original basis: the logits do not depend on it
    targets, _ = reference_pass(load_model(hf), calib, targets=True, head_hessian=False, progress=False)

    def kld():
        total = 0.0
        with torch.no_grad():
            for k, s in enumerate(calib):
                p = targets[k].float()
                total += float((p.exp() * (p - torch.log_softmax(qm.model(s), -1))).sum(-1).mean())
        return total / len(calib)
    before = kld()
    tune_scales(qm, calib, targets, epochs=10, lr=1e-2, progress=False)
    after = kld()
    assert after < 0.9 * before, (before, after)
    for name, q in qm.codes.items():
        layer, key = name.removeprefix("model.layers.").split(".", 1)
        assert torch.equal(qm.model.blocks[int(layer)][key], dequantize_matrix(q)), name


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pvq_convert", *map(str, args), "-q"],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--bits", "2.0"], "cannot be reached"),
    (["--bits", "5", "--allocate"], "cannot be reached"),
    (["--bits", "1.5", "--method", "rtn"], "has no preset"),
    (["--bits", "2.5", "--bits-map", "ffn_down=4.25,attn_v=4.25,attn_q=4.25,attn_k=4.25,ffn_up=4.25"],
     "below what the --bits-map rates need"),
    (["--bits", "3.25", "--bits-map", "ffn_down=4"], "bad entry"),
    (["--bits", "3.25", "--bits-map", "blk.7.ffn_down=4.25"], "matches no quantized tensor"),
    (["--bits", "3.25", "--bits-map", "/nonexistent.map"], "cannot read"),
    (["--bits", "3.25", "--calib", EVAL_TEXT, "--calib-seqs", "100000"], "calibration text too short"),
    (["--bits", "3.25", "--calib", "/nonexistent.txt"], "cannot read calibration file"),
    (["--bits", "3.25", "--tune-epochs", "-1"], "--tune-epochs must be >= 0"),
    (["--bits", "3.25", "--embd-bits", "3.0"], "--embd-bits 3.0 has no preset"),
    (["--bits", "3.25", "--embd-bits", "4.25", "--keep-embd"], "contradict each other"),
    (["--bits", "3.25", "--method", "gptq", "--keep-embd"], "apply to --method pvq"),
])
def test_bad_quantization_requests(spm_model_dir, tmp_path, args, message):
    r = run_cli(spm_model_dir, "-o", tmp_path / "o.gguf", *args)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("flags, embd, output", [
    ((), "PVQ 8-6-3", "PVQ 8-6-3"),                          # the default: the vocabulary at the --bits preset
    (("--embd-bits", "3.25"), "PVQ 8-14-3", "PVQ 8-14-3"),
    (("--keep-embd",), "F16", "F16"),
])
def test_vocabulary_coding_flags(spm_model_dir, tmp_path, flags, embd, output):
    """The fixture has its own lm_head, so both vocabulary matrices are in the file, as the flags ask; the
    summary counts the file against the checkpoint's parameters."""
    import gguf

    from pvq_convert.pvq_format import is_pvq_type, layout_of_type
    out = tmp_path / "o.gguf"
    r = run_cli(spm_model_dir, "-o", out, "--bits", "2.25", "--no-hessian", *flags)
    assert r.returncode == 0, r.stderr

    def kind(t):
        if is_pvq_type(int(t.tensor_type)):
            lay = layout_of_type(int(t.tensor_type))
            return f"PVQ {lay.D}-{lay.K}-{lay.gain_bits}"
        return t.tensor_type.name
    types = {t.name: kind(t) for t in gguf.GGUFReader(out).tensors}
    assert (types["token_embd.weight"], types["output.weight"]) == (embd, output)
    assert "output_mix.weight" not in types  # an untied checkpoint keeps its own head
    assert f"whole file: {out.stat().st_size} bytes" in r.stdout


def test_bits_between_presets_are_allocated(spm_model_dir, tmp_path):
    """--bits between two presets, with no --allocate: the per-tensor allocation reaches that average, so the file
    mixes rates; the vocabulary takes the highest preset not above --bits."""
    import gguf

    from pvq_convert.pvq_format import is_pvq_type, layout_of_type
    out = tmp_path / "o.gguf"
    r = run_cli(spm_model_dir, "-o", out, "--bits", "3.5", "--no-hessian", "--calib-seqs", "2", "--calib-len", "32")
    assert r.returncode == 0, r.stderr
    rates = {t.name: layout_of_type(int(t.tensor_type)).field_bits / layout_of_type(int(t.tensor_type)).D
             for t in gguf.GGUFReader(out).tensors if is_pvq_type(int(t.tensor_type))}
    linear = [v for k, v in rates.items() if k.startswith("blk.")]
    assert len(set(linear)) > 1 and min(linear) < 3.5 < max(linear), rates
    assert rates["token_embd.weight"] == 3.25
    assert "PVQ rates per tensor" in r.stdout


def test_rows_that_do_not_fit_the_group(spm_model_dir, tmp_path):
    import json
    import shutil

    from models.spm_fixture import random_weights
    from safetensors.numpy import save_file

    d = tmp_path / "m"
    shutil.copytree(spm_model_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 252  # down_proj rows of 252 weights: not a multiple of 8
    (d / "config.json").write_text(json.dumps(cfg))
    save_file(random_weights(cfg, cfg["vocab_size"]), d / "model.safetensors")
    r = run_cli(d, "-o", tmp_path / "o.gguf", "--bits", "3.25", "--no-hessian")
    assert r.returncode == 1 and "not a multiple of 32" in r.stderr, r.stderr


def test_self_generated_calibration(spm_model_dir):
    """With no --calib the model writes its own calibration text: sequences of the requested shape
    that start with the seeds, the same for the same seed; the cached forward pass that samples them
    gives the logits of the whole-sequence forward pass."""
    from pvq_convert.calib import SEEDS, generated_tokens, load_tokenizer
    from pvq_convert.torch_model import load_model

    model, encode = load_model(spm_model_dir), load_tokenizer(spm_model_dir)
    a = generated_tokens(model, encode, 3, 24, seed=1)
    assert a.shape == (3, 24) and torch.equal(a, generated_tokens(model, encode, 3, 24, seed=1))
    for row, seed_text in zip(a, SEEDS):
        start = encode(seed_text)
        assert row[:len(start)].tolist() == start
    logits = model(a[0])
    cache = [{} for _ in range(model.config.n_layers)]
    for t in range(a.shape[1]):
        x = model.embed(a[:1, t:t + 1])
        for i in range(model.config.n_layers):
            x = model.block(i, x, cache=cache[i])
        torch.testing.assert_close(model.head(x)[0, -1], logits[t], rtol=1e-4, atol=1e-4)


def test_generation_holds_a_half_precision_model_in_half_the_memory(spm_model_dir, tmp_path):
    """The self-generated calibration runs the whole model: load_held_model keeps a float16 checkpoint's
    blocks in float16 and widens each into reused float32 buffers, and writes the same tokens as the float32
    model of load_model."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from pvq_convert.calib import generated_tokens, load_tokenizer
    from pvq_convert.hf_model import open_model
    from pvq_convert.torch_model import load_held_model, load_model, narrowest

    d = tmp_path / "f16"
    shutil.copytree(spm_model_dir, d)
    weights = load_file(spm_model_dir / "model.safetensors")
    save_file({k: v.astype("float16") for k, v in weights.items()}, d / "model.safetensors")
    full, held = load_model(d), load_held_model(open_model(d))
    assert narrowest(full.blocks[0]["mlp.up_proj.weight"]).dtype == torch.float16
    assert narrowest(full.blocks[0]["mlp.up_proj.weight"] * (1 + 2 ** -20)).dtype == torch.float32
    for i in range(full.config.n_layers):
        for k, v in full.blocks[i].items():
            assert held.blocks[i][k].dtype == torch.float32 and torch.equal(held.blocks[i][k], v), k
    encode = load_tokenizer(d)
    assert torch.equal(generated_tokens(held, encode, 3, 24, seed=2), generated_tokens(full, encode, 3, 24, seed=2))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_request_without_a_gpu(spm_model_dir, tmp_path):
    r = run_cli(spm_model_dir, "-o", tmp_path / "o.gguf", "--bits", "3.25", "--device", "cuda")
    assert r.returncode == 1 and "--device cuda: torch sees no CUDA GPU" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not list(tmp_path.iterdir())
