"""The unquantized converter against the peer: llama.cpp must load what we write and behave the same."""
from __future__ import annotations

import json
import shutil

import gguf
import numpy as np
import pytest

from conftest import peer_llama
from pvq_convert.convert import convert

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Debian is a free operating system that"]


@pytest.fixture(scope="module")
def smollm2_f16(smollm2, tmp_path_factory):
    return convert(smollm2.hf_dir, tmp_path_factory.mktemp("conv") / "smollm2-f16.gguf", "f16", progress=False)


def greedy(llm, prompt: str, n: int) -> list[int]:
    llm.reset()
    tokens = llm.tokenize(prompt.encode(), add_bos=True, special=False)
    out = []
    for tok in llm.generate(tokens, temp=0.0, top_k=1):
        out.append(tok)
        if len(out) == n:
            return out
    return out


def test_f16_tensors_equal_reference(smollm2, smollm2_f16):
    """Dequantized weights through HF layout and back (Q/K un-permuted, re-permuted) are bit-identical."""
    ours = {t.name: t for t in gguf.GGUFReader(smollm2_f16).tensors}
    ref = {t.name: t for t in gguf.GGUFReader(smollm2.f16_gguf).tensors}
    assert ours.keys() == ref.keys()
    for name, t in ref.items():
        assert ours[name].tensor_type == t.tensor_type, name
        assert np.array_equal(ours[name].data, t.data), name


def test_f16_metadata_matches_reference(smollm2, smollm2_f16):
    ours, ref = gguf.GGUFReader(smollm2_f16).fields, gguf.GGUFReader(smollm2.f16_gguf).fields
    for key in ref:
        if key.startswith(("llama.", "tokenizer.")) and key != "tokenizer.ggml.add_space_prefix":
            assert key in ours, key
            assert ours[key].contents() == ref[key].contents(), key


def test_f16_greedy_and_tokens_equal_peer_on_reference(smollm2, smollm2_f16, eval_text):
    ours, ref = peer_llama(smollm2_f16, n_ctx=256), peer_llama(smollm2.f16_gguf, n_ctx=256)
    for prompt in PROMPTS:
        a, b = greedy(ours, prompt, 32), greedy(ref, prompt, 32)
        assert len(a) == 32 and a == b, prompt
    text = eval_text.encode()
    assert ours.tokenize(text, add_bos=False) == ref.tokenize(text, add_bos=False)


@pytest.mark.parametrize("outtype", ["f32", "bf16", "q8_0"])
def test_other_outtypes_load_in_peer(smollm2, smollm2_f16, tmp_path, outtype):
    """Each output type loads in llama.cpp and predicts like the F16 file (same top token, close logits)."""
    path = convert(smollm2.hf_dir, tmp_path / f"m-{outtype}.gguf", outtype, progress=False)
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    want = {"f32": gguf.GGMLQuantizationType.F32, "bf16": gguf.GGMLQuantizationType.BF16,
            "q8_0": gguf.GGMLQuantizationType.Q8_0}[outtype]
    assert types["blk.0.ffn_down.weight"] == want and types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32

    def last_logits(p):
        llm = peer_llama(p, n_ctx=128, logits_all=True)
        llm.eval(llm.tokenize(PROMPTS[2].encode()))
        return np.array(llm.scores[llm.n_tokens - 1])

    a, b = last_logits(path), last_logits(smollm2_f16)
    assert a.argmax() == b.argmax()
    assert np.corrcoef(a, b)[0, 1] > 0.999


def test_spm_fixture_tokenizes_like_sentencepiece(spm_model_dir, tmp_path, eval_text):
    import sentencepiece as spm

    path = convert(spm_model_dir, tmp_path / "spm.gguf", "f16", progress=False)
    meta = gguf.GGUFReader(path).fields
    assert meta["tokenizer.ggml.model"].contents() == "llama"
    sp = spm.SentencePieceProcessor(model_file=str(spm_model_dir / "tokenizer.model"))
    llm = peer_llama(path, vocab_only=True)
    lines = [line for line in eval_text.splitlines() if line.strip()][2000:2200]
    assert len(lines) == 200
    for line in lines:
        assert llm.tokenize(line.encode(), add_bos=False) == sp.encode(line), line
    # And the model itself runs in llama.cpp.
    assert len(greedy(peer_llama(path, n_ctx=64), "Debian", 4)) == 4


def test_single_file_and_sharded_inputs_give_the_same_file(spm_model_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    whole = convert(spm_model_dir / "model.safetensors", tmp_path / "whole.gguf", "f32", progress=False)
    sharded = tmp_path / "sharded"
    shutil.copytree(spm_model_dir, sharded)
    (sharded / "model.safetensors").unlink()
    tensors = load_file(spm_model_dir / "model.safetensors")
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        fname = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, sharded / fname)
        weight_map |= {n: fname for n in part}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    from_index = convert(sharded / "model.safetensors.index.json", tmp_path / "idx.gguf", "f32", progress=False)
    a = {t.name: t.data for t in gguf.GGUFReader(whole).tensors}
    b = {t.name: t.data for t in gguf.GGUFReader(from_index).tensors}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_fixture_tokenizer_json_agrees_with_peer(smollm2, eval_text):
    """The tokenizer.json the models script writes, read by Hugging Face's own `tokenizers`,
    tokenizes the whole eval text as llama.cpp does with the original GGUF's vocabulary."""
    from tokenizers import Tokenizer

    ours = Tokenizer.from_file(str(smollm2.hf_dir / "tokenizer.json")).encode(eval_text, add_special_tokens=False)
    peer = peer_llama(smollm2.q4_1_gguf, vocab_only=True).tokenize(eval_text.encode(), add_bos=False)
    assert ours.ids == peer
