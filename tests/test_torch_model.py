"""The torch forward pass (pvq_convert.torch_model) against llama.cpp on the F16 reference.

The F16 file holds our fp32 weights rounded to F16, and llama.cpp's CPU F16 matmuls also round the
activations to F16 (and its KV cache is F16). So the two cannot agree to fp32 precision. The tolerance
is measured, not guessed: we run our model a second time on F16-rounded weights, which isolates one
rounding source of relative size 2^-11; llama.cpp's activation rounding is of the same size, so its
distance from our F16-weight run must stay within twice the weight-rounding effect."""
import numpy as np
import pytest
import torch

from conftest import peer_llama
from pvq_convert.torch_model import load_model

N_PROMPT, N_GREEDY = 64, 16


@pytest.fixture(scope="module")
def model(smollm2):
    torch.set_num_threads(2)
    return load_model(smollm2.hf_dir, torch.float32)


@pytest.fixture(scope="module")
def peer(smollm2):
    return peer_llama(smollm2.f16_gguf, logits_all=True, n_ctx=256)


@pytest.fixture(scope="module")
def prompt(peer, eval_text):
    return peer.tokenize(eval_text[:4000].encode(), add_bos=False)[:N_PROMPT]


def _rms(a):
    return float(np.sqrt(np.mean(np.square(a))))


def _f16_weights(model):
    import dataclasses
    return dataclasses.replace(model, globals={k: v.half().float() for k, v in model.globals.items()},
                               blocks=[{k: v.half().float() for k, v in b.items()} for b in model.blocks],
                               _rope_cache={})


def test_logits_match_llama_cpp(model, peer, prompt):
    peer.reset()
    peer.eval(prompt)
    ref = np.asarray(peer.scores[:len(prompt)], dtype=np.float64)
    with torch.no_grad():
        ours = model(prompt).double().numpy()
        ours_f16w = _f16_weights(model)(prompt).double().numpy()
    weight_rounding = _rms(ours - ours_f16w)
    assert 0 < weight_rounding < 1e-3 * _rms(ref)
    assert _rms(ours_f16w - ref) < 2 * weight_rounding
    assert _rms(ours - ref) < 3 * weight_rounding
    assert np.abs(ours - ref).max() < 1e-2 * np.abs(ref).max()
    assert (ours.argmax(1) == ref.argmax(1)).all()


def test_greedy_continuation_matches(model, peer, prompt):
    short = prompt[:16]
    peer.reset()
    peer.eval(short)
    theirs = []
    for _ in range(N_GREEDY):
        theirs.append(int(np.argmax(peer.scores[peer.n_tokens - 1])))
        peer.eval([theirs[-1]])
    ours = list(short)
    with torch.no_grad():
        for _ in range(N_GREEDY):
            ours.append(int(model(ours)[-1].argmax()))
    assert ours[len(short):] == theirs


def test_float64_agrees_with_float32(smollm2, model, prompt):
    m64 = load_model(smollm2.hf_dir, torch.float64)
    with torch.no_grad():
        a, b = model(prompt[:32]).double(), m64(prompt[:32])
    assert float((a - b).abs().max()) < 1e-4 * float(b.abs().max())


def test_hook_sees_every_linear_input(model, prompt):
    seen = {}
    with torch.no_grad():
        x = model.embed(torch.tensor(prompt[:8]))
        model.block(0, x, hook=lambda i, name, inp: seen.setdefault(name, inp.shape))
    c = model.config
    assert seen["self_attn.q_proj"] == (8, c.dim) and seen["self_attn.o_proj"] == (8, c.n_heads * c.head_dim)
    assert seen["mlp.down_proj"] == (8, c.ffn_dim) and len(seen) == 7


@pytest.fixture(scope="module")
def qwen2_dir(smollm2, tmp_path_factory):
    from models.qwen2_fixture import build
    return build(tmp_path_factory.mktemp("qwen2"), smollm2.hf_dir)


@pytest.mark.parametrize("fixture", ["qwen2_dir", "spm_model_dir"])
def test_small_models_match_llama_cpp_in_float32(fixture, request, tmp_path):
    """Random-weight qwen2 (QKV biases, NEOX RoPE) and llama (permuted Q/K) fixtures, written as F32
    GGUF with an F32 KV cache: no F16 rounding anywhere, so only summation order differs."""
    from pvq_convert.convert import convert
    hf_dir = request.getfixturevalue(fixture)
    peer = peer_llama(convert(hf_dir, tmp_path / "m.gguf", "f32", progress=False), logits_all=True,
                      n_ctx=128, type_k=0, type_v=0)  # 0 = GGML_TYPE_F32
    tokens = list(range(100, 164))
    peer.eval(tokens)
    ref = np.asarray(peer.scores[:len(tokens)], dtype=np.float64)
    with torch.no_grad():
        ours = load_model(hf_dir)(tokens).double().numpy()
    assert np.abs(ours - ref).max() < 1e-4 * np.abs(ref).max()
