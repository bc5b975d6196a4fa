"""GPTQ with column groups: the error feedback against its closed form, and the ordering of the
methods' Hessian-weighted errors on a real SmolLM2 layer (all errors in float64)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pvq_convert.gptq import gptq, hessian_error
from pvq_convert.pvq_presets import preset
from pvq_convert.quantizers import PVQQuantizer, ScalarQuantizer


class PerturbFirstGroup:
    """Moves the first group by a fixed error and leaves every other column as it is handed over."""

    def __init__(self, group, err):
        self.group, self.err = group, err

    def quantize(self, col, w, form, ahead):
        return w - self.err.to(w) if col == 0 else w


@pytest.mark.parametrize("D", [1, 8])
def test_error_feedback_is_the_optimal_compensation(D):
    """Fixing group c at W_c - e, GPTQ must leave the other columns at the minimiser of the output
    error: W_r - d with d = -e H_cr H_rr^-1 (closed form, numpy float64)."""
    rng = np.random.default_rng(0)
    n, R = 64, 5
    X = rng.standard_normal((256, n)) @ rng.standard_normal((n, n))
    H = X.T @ X
    W = rng.standard_normal((R, n))
    e = rng.standard_normal((R, D))
    Q = gptq(torch.tensor(W), torch.tensor(H), PerturbFirstGroup(D, torch.tensor(e)), damp=0.0, block=32)
    c, r = slice(0, D), slice(D, n)
    d = -e @ H[c, r] @ np.linalg.inv(H[r, r])
    np.testing.assert_allclose(Q.numpy()[:, c], W[:, c] - e, atol=1e-5)
    np.testing.assert_allclose(Q.numpy()[:, r], W[:, r] - d, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def layer(smollm2):
    """A real weight (blk.3 q_proj, 576 x 576) and a Hessian from correlated synthetic inputs."""
    from safetensors import safe_open
    with safe_open(smollm2.hf_dir / "model.safetensors", framework="pt") as f:
        W = f.get_tensor("model.layers.3.self_attn.q_proj.weight").float()[:192]
    g = torch.Generator().manual_seed(0)
    n = W.shape[1]
    mix = torch.randn(n, n, generator=g, dtype=torch.float64) / n ** 0.5 + torch.eye(n, dtype=torch.float64)
    X = torch.randn(4096, n, generator=g, dtype=torch.float64) @ mix * torch.linspace(0.2, 3, n, dtype=torch.float64)
    return W, X.T @ X


def test_method_ordering_on_a_real_layer(layer):
    W, H = layer
    lay = preset(3.25)
    scalar = ScalarQuantizer(bits=3, block=64)
    err = {
        "rtn": hessian_error(W, scalar.rtn(W), H),
        "gptq": hessian_error(W, gptq(W, H, ScalarQuantizer(bits=3, block=64)), H),
        "pvq": hessian_error(W, pvq_plain(W, lay), H),
        "pvq-gptq-l2": hessian_error(W, gptq(W, H, PVQQuantizer(W, lay, hessian_aware=False)), H),
        "pvq-gptq": hessian_error(W, gptq(W, H, PVQQuantizer(W, lay)), H),
    }
    print({k: f"{v:.4g}" for k, v in err.items()})
    assert err["gptq"] < err["rtn"]
    assert err["pvq"] < err["rtn"]
    assert err["pvq-gptq"] < err["pvq-gptq-l2"] < err["pvq"]
    assert err["pvq-gptq"] < err["gptq"]


def pvq_plain(W, lay):
    from pvq_convert import pvq
    return pvq.dequantize_matrix(pvq.quantize_matrix(W, lay.D, lay.K, lay.gain_bits))


def test_row_workers_give_the_codes_of_one_process(layer):
    """The converter quantizes a matrix in row blocks in worker processes (row_workers.py): rows are
    independent, so the result must be exactly that of one process, for PVQ and scalar GPTQ, for two
    matrices sharing the Hessian (a larger and a smaller one), for a 3-way split and for blocks of at most 16
    rows (the bound that keeps a vocabulary matrix's blocks small)."""
    from pvq_convert.quantize import Method, quantize_group
    from pvq_convert.row_workers import RowWorkers

    W, H = layer
    Ws = [W, W[:40] * 2]
    for method in (Method("pvq", layout=preset(3.25)), Method("gptq")):
        alone = quantize_group(method, Ws, H, [None, None], None)
        for n, max_rows in ((2, 10**9), (3, 10**9), (2, 16)):
            with RowWorkers(n, max_rows) as workers:
                split = quantize_group(method, Ws, H, [None, None], workers)
            for (a, qa), (b, qb) in zip(alone, split):
                assert torch.equal(a, b)
                if method.name == "pvq":
                    assert torch.equal(qa.index, qb.index) and torch.equal(qa.code, qb.code)
                    assert torch.equal(qa.scale, qb.scale)
                else:
                    assert qa is None and qb is None
