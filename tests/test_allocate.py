"""Per-tensor bit allocation: the budget, the order of the choices, --bits-map, and the measured
errors on a real SmolLM2 layer."""
from __future__ import annotations

import pytest
import torch

from pvq_convert import ConvertError
from pvq_convert.allocate import RATES, Tensor, allocate, parse_bits_map, tensor_errors


def blocks(n_layers=4):
    kinds = [("self_attn.q_proj", 576, 576), ("self_attn.k_proj", 192, 576), ("self_attn.v_proj", 192, 576),
             ("self_attn.o_proj", 576, 576), ("mlp.gate_proj", 1536, 576), ("mlp.up_proj", 1536, 576),
             ("mlp.down_proj", 576, 1536)]
    return [Tensor(f"model.layers.{i}.{k}.weight", r, c) for i in range(n_layers) for k, r, c in kinds]


def law(tensors, seed=0):
    """Errors of a high-rate quantizer, E = s 2^(-2r), with a random sensitivity s per tensor."""
    g = torch.Generator().manual_seed(seed)
    s = {t.name: float(torch.exp(3 * torch.randn(1, generator=g))) for t in tensors}
    return s, {t.name: {r: s[t.name] * 2.0 ** (-2 * r) for r in RATES} for t in tensors}


@pytest.mark.parametrize("target", [2.5, 3.25, 3.9])
def test_budget_is_met_and_sensitive_tensors_get_more(target):
    tensors = blocks()
    s, errors = law(tensors)
    rate = allocate(tensors, errors, target)
    n = sum(t.weights for t in tensors)
    used = sum(t.weights * rate[t.name] for t in tensors)
    assert used <= target * n * (1 + 1e-9)
    # Greedy stops only when no upgrade fits.
    spare = target * n - used
    assert all(rate[t.name] == RATES[-1] or t.weights * 0.5 > spare for t in tensors)
    # Among tensors of one shape, a more sensitive one never gets fewer bits.
    for a in tensors:
        for b in tensors:
            if (a.rows, a.cols) == (b.rows, b.cols) and s[a.name] > s[b.name]:
                assert rate[a.name] >= rate[b.name]
    # And the mix beats the uniform rate at the same budget where one exists.
    if target in RATES:
        assert sum(errors[t.name][rate[t.name]] for t in tensors) < sum(errors[t.name][target] for t in tensors)


def test_bits_map_fixes_rates():
    tensors = blocks()
    _, errors = law(tensors)
    rate = allocate(tensors, errors, 3.25, parse_bits_map("ffn_down=4.25, blk.1.attn_v=2.25"))
    assert all(r == 4.25 for name, r in rate.items() if "down_proj" in name)
    assert rate["model.layers.1.self_attn.v_proj.weight"] == 2.25


def test_bits_map_file(tmp_path):
    f = tmp_path / "rates.txt"
    f.write_text("# sensitive tensors\nffn_down=4.25\nattn_v=3.75, attn_output=3.75\n")
    assert parse_bits_map(str(f)) == {"ffn_down": 4.25, "attn_v": 3.75, "attn_output": 3.75}


@pytest.mark.parametrize("spec, message", [("ffn_down=4", "bad entry"), ("ffn_down", "cannot read"),
                                           ("attn_z=3.25", "matches no quantized tensor")])
def test_bad_bits_map(spec, message):
    tensors = blocks(1)
    _, errors = law(tensors)
    with pytest.raises(ConvertError, match=message):
        allocate(tensors, errors, 3.25, parse_bits_map(spec))


def test_measured_errors_fall_with_the_rate(smollm2):
    """On a real layer and a real-looking Hessian, each step up in rate lowers the error by a factor
    near 2^(2 x step) (2 per half bit, 1.41 per quarter bit; between 0.7 and 1.5 times that)."""
    from safetensors import safe_open
    with safe_open(smollm2.hf_dir / "model.safetensors", framework="pt") as f:
        W = f.get_tensor("model.layers.3.mlp.down_proj.weight").float()
    g = torch.Generator().manual_seed(0)
    X = torch.randn(2048, W.shape[1], generator=g, dtype=torch.float64) * torch.linspace(0.2, 3, W.shape[1],
                                                                                       dtype=torch.float64)
    e = tensor_errors(W, X.T @ X, torch.ones(W.shape[0], dtype=torch.float64))
    ratios = [(e[a] / e[b], 4 ** (b - a)) for a, b in zip(RATES, RATES[1:])]
    assert all(0.7 * want < q < 1.5 * want for q, want in ratios), (e, ratios)


def test_output_fisher_predicts_the_kl_divergence_of_an_error(smollm2):
    """The allocation's sensitivity: for a small random error in one layer of SmolLM2, the KL divergence from
    the original model that output_fisher predicts (per token, sum_r F_r (dW H dW^T)_rr / (2 tokens^2)) is the
    one measured, within a factor of 2 (a second-order estimate that keeps only the diagonal, over rows and
    over tokens)."""
    from models import EVAL_TEXT
    from pvq_convert.calib import calibration_tokens
    from pvq_convert.quantize import output_fisher
    from pvq_convert.torch_model import load_model
    model = load_model(smollm2.hf_dir)
    calib = calibration_tokens(smollm2.hf_dir, EVAL_TEXT, 2, 256)
    fisher = output_fisher(model, calib, progress=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        base = [torch.log_softmax(model(s), -1) for s in calib]
    for i, name in ((3, "mlp.down_proj"), (20, "self_attn.v_proj")):
        W = model.blocks[i][name + ".weight"]
        dW = torch.randn(W.shape, generator=g) * W.std() * 0.05
        with torch.no_grad():
            model.blocks[i][name + ".weight"] = W + dW
            kld = sum(float((p.exp() * (p - torch.log_softmax(model(s), -1))).sum()) for p, s in zip(base, calib))
            model.blocks[i][name + ".weight"] = W
        xs = []
        with torch.no_grad():
            for s in calib:
                x = model.embed(s)
                for j in range(i):
                    x = model.block(j, x)
                model.block(i, x, lambda layer, n, inp: xs.append(inp.double()) if n == name else None)
        X = torch.cat(xs)
        dY2 = ((X @ dW.double().T) ** 2).sum(0)
        predicted = float((fisher[f"model.layers.{i}.{name}.weight"] * dY2).sum()) / 2 / X.shape[0] ** 2
        measured = kld / X.shape[0]
        assert 1 / 2 < predicted / measured < 2, (name, predicted, measured)
