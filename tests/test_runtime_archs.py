"""Both architectures and every weight type on small random models, against llama.cpp loading the same
files: llama (adjacent-pair RoPE) and qwen2 (NEOX RoPE, QKV biases), F32 / F16 / BF16 / Q8_0."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import peer_llama
from runtime_clib import Model, tiny_gguf

pytest.importorskip("llama_cpp")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("wtype", ["f32", "f16", "bf16", "q8_0"])
def test_tiny_model_logits_match_peer(tmp_path, arch, wtype):
    path = tiny_gguf(tmp_path / f"{arch}-{wtype}.gguf", arch=arch, wtype=wtype, seed=3)
    ids = list(np.random.default_rng(0).integers(0, 256, 24))
    peer = peer_llama(path, n_ctx=64, logits_all=True)
    peer.eval(ids)
    theirs = np.array(peer.scores[:len(ids)])
    m = Model(path, n_ctx=64)
    ours = m.eval(ids)
    m.close()
    diff = np.abs(ours - theirs).max()
    print(f"{arch} {wtype}: max abs {diff:.3g} (logit range {np.abs(theirs).max():.3g})")
    assert diff < (1e-3 if wtype in ("f32", "f16") else 2e-2) * max(1.0, np.abs(theirs).max())
    # a model whose RoPE pairing were wrong would still agree at position 0 only
    assert (ours.argmax(1) == theirs.argmax(1)).mean() > 0.9
