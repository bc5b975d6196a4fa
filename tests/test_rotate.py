"""Coherence processing (pvq_convert.rotate): the rotated model computes the same function."""
import dataclasses

import pytest
import torch

from pvq_convert.rotate import Rotation, rotate_model
from pvq_convert.torch_model import load_model

N_TOKENS = 32


@pytest.fixture(scope="module")
def tokens(smollm2, eval_text):
    from pvq_convert.calib import load_tokenizer
    return load_tokenizer(smollm2.hf_dir)(eval_text[:3000])[:N_TOKENS]


@pytest.fixture(scope="module")
def smol64(smollm2):
    torch.set_num_threads(2)
    return load_model(smollm2.hf_dir, torch.float64)


@pytest.fixture(scope="module")
def rot64(smol64):
    return rotate_model(smol64, Rotation(seed=1))


def _max_rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def test_rotated_float64_gives_same_logits(smol64, rot64, tokens):
    with torch.no_grad():
        err = _max_rel(rot64(tokens), smol64(tokens))
    print(f"float64 rotated vs original: max |dlogit| / max |logit| = {err:.2e}")
    assert err < 1e-10


def test_rotated_float32_gives_same_logits(smollm2, smol64, tokens):
    """The acceptance figure: 1e-4 relative in float32. Rotating changes only the rounding, so the
    rotated fp32 model must sit as close to the float64 original as the plain fp32 model does."""
    m32 = load_model(smollm2.hf_dir, torch.float32)
    rot = rotate_model(m32, Rotation(seed=1))
    with torch.no_grad():
        ref64, ref32, got = smol64(tokens), m32(tokens), rot(tokens)
    err, base = _max_rel(got, ref32), _max_rel(ref32, ref64)
    print(f"float32 rotated vs original: {err:.2e} (fp32 original vs fp64: {base:.2e})")
    assert err < 1e-4
    assert _max_rel(got, ref64) < 10 * base + 1e-6


def test_tied_head_keeps_one_embedding_and_the_logits(smol64, tokens):
    """tie_head: one rotated embedding serves lookup and head, the final gain in front of it as the
    symmetric dim x dim head_mix = Q^T diag(g) Q (fp16-rounded as the file stores it). The logits stay
    those of the original up to that rounding (relative 2^-11 per entry of a mix whose diagonal is g)."""
    tied = rotate_model(smol64, Rotation(seed=1), tie_head=True)
    g = tied.globals
    assert "lm_head.weight" not in g and (g["norm.weight"] == 1).all()
    mix = g["head_mix.weight"]
    assert mix.shape == (smol64.config.dim,) * 2
    assert torch.equal(mix, mix.half().double())                    # exactly fp16 values
    assert float((mix - mix.T).abs().max()) <= 2 ** -10 * float(mix.abs().max())
    # the mix is the final gain seen in the rotated basis: same trace, same spectrum
    gain = smol64.globals["norm.weight"]
    assert abs(float(torch.trace(mix)) - float(gain.sum())) < 1e-2 * float(gain.abs().sum())
    with torch.no_grad():
        err = _max_rel(tied(tokens), smol64(tokens))
    print(f"tied rotated head vs original: max |dlogit| / max |logit| = {err:.2e}")
    assert err < 2e-3


def test_rotated_weights_are_folded_untied_and_incoherent(smol64, rot64):
    rot = rot64
    g, c = rot.globals, smol64.config
    assert "lm_head.weight" not in smol64.globals  # SmolLM2 ties its embeddings...
    assert not torch.allclose(g["lm_head.weight"], g["embed_tokens.weight"])  # ...the rotated model does not
    assert (g["norm.weight"] == 1).all()
    assert all((b[n] == 1).all() for b in rot.blocks for n in ("input_layernorm.weight", "post_attention_layernorm.weight"))

    def incoherence(W):  # max |w| relative to the rms: large for outlier-heavy, ~4-6 for Gaussian
        return float(W.abs().max() / W.pow(2).mean().sqrt())

    for name in ("self_attn.q_proj.weight", "self_attn.o_proj.weight", "mlp.down_proj.weight"):
        before = sum(incoherence(b[name]) for b in smol64.blocks) / c.n_layers
        after = sum(incoherence(b[name]) for b in rot.blocks) / c.n_layers
        assert after < 0.75 * before, (name, before, after)


@pytest.mark.parametrize("rotation", [Rotation(residual=False, ffn_hadamard=True),
                                      Rotation(residual=True, ffn_hadamard=False)])
def test_each_part_alone_preserves_logits(smol64, tokens, rotation):
    small = dataclasses.replace(smol64, config=dataclasses.replace(smol64.config, n_layers=4),
                                blocks=smol64.blocks[:4], _rope_cache={})
    rot = rotate_model(small, rotation)
    assert (rot.ffn_hadamard is not None) == rotation.ffn_hadamard
    with torch.no_grad():
        assert _max_rel(rot(tokens[:16]), small(tokens[:16])) < 1e-10


def test_qwen2_biases_survive_rotation(smollm2, tmp_path):
    from models.qwen2_fixture import build
    m = load_model(build(tmp_path / "qwen2", smollm2.hf_dir), torch.float64)
    assert m.config.qkv_bias and "self_attn.q_proj.bias" in m.blocks[0]
    rot = rotate_model(m, Rotation(seed=3))
    with torch.no_grad():
        assert _max_rel(rot(list(range(5, 40))), m(list(range(5, 40)))) < 1e-10


def test_rotating_twice_is_refused(smol64):
    small = dataclasses.replace(smol64, blocks=[], config=dataclasses.replace(smol64.config, n_layers=0))
    with pytest.raises(ValueError):
        rotate_model(rotate_model(small))


@pytest.mark.parametrize("n_ff", [1536, 4864, 11008, 64, 6])
def test_documented_runtime_algorithm_reproduces_the_online_transform(n_ff):
    """docs/rotation.md's loop, written out in numpy from the metadata alone, equals hadamard_transform."""
    import numpy as np
    from pvq_convert.hadamard import hadamard_transform
    from pvq_convert.rotate import gguf_metadata

    meta = gguf_metadata(Rotation(seed=5), n_ff)
    p, scale = meta["pvq.rotation.ffn_hadamard.p"], meta["pvq.rotation.ffn_hadamard.scale"]
    base = np.array(meta["pvq.rotation.ffn_hadamard.base"], dtype=np.int8)
    h = int(round(len(base) ** 0.5))
    assert h * h == len(base) and h * p == n_ff and set(np.unique(base)) <= {-1, 0, 1}
    B = base.reshape(h, h)
    f = np.random.default_rng(n_ff).standard_normal(n_ff)
    blocks = f.reshape(h, p).copy()
    step = 1
    while step < p:
        for i in range(p):
            if i & step == 0:
                u, v = blocks[:, i].copy(), blocks[:, i + step].copy()
                blocks[:, i], blocks[:, i + step] = u + v, u - v
        step *= 2
    y = (B.astype(np.float64) @ blocks).reshape(-1) * scale
    np.testing.assert_allclose(y, hadamard_transform(torch.from_numpy(f)).numpy(), atol=1e-10)
