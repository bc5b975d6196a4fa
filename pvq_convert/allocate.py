"""Per-tensor bit allocation: `--bits` is the average over the quantized linear weights; each tensor
gets one of the PVQ rates (pvq_presets.PRESETS) from its measured sensitivity.

Sensitivity.  For every linear weight W of the rotated model, a sample of its rows is PVQ-coded at
every rate (plain nearest-point coding, no GPTQ feedback) and the error is weighted by the Hessian of
the layer's input, H = X^T X over the calibration tokens, and by the diagonal F of the Fisher
information in the layer's output space (quantize.output_fisher):
E(r) = sum_rows F_row ((W - Q_r) H (W - Q_r)^T)_row,row, scaled to all rows.  The Hessian says how
large an error the tensor adds to its layer's output, the Fisher how much of it reaches the KL
divergence at the logits, so errors of different layers and blocks compare directly.

Allocation.  Minimise sum_t E_t(r_t) subject to sum_t n_t r_t <= --bits x sum_t n_t (n_t weights,
r_t the nominal rate, so that a uniform preset is one of the choices and both carry the same fp16
row-scale overhead, reported exactly at the end): all tensors start at the lowest rate, then the upgrade with the largest error reduction per added bit is taken
while it fits (the greedy solution of the convex problem).  `--bits-map` fixes the rate of matching
tensors before the rest is allocated.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from . import ConvertError
from .arch import gguf_tensor_name
from .pvq import dequantize_matrix, quantize_matrix
from .pvq_format import Layout
from .pvq_presets import PRESETS, preset

RATES = tuple(sorted(PRESETS))


@dataclass(frozen=True)
class Tensor:
    name: str          # HF name, e.g. model.layers.3.mlp.down_proj.weight
    rows: int
    cols: int

    @property
    def weights(self) -> int:
        return self.rows * self.cols

    def exact_bits(self, rate: float) -> float:
        """Bits of the tensor in the file at a rate: packed fields and one fp16 scale per row."""
        return self.rows * preset(rate).bits_per_weight(self.cols) * self.cols

    @property
    def gguf(self) -> str:
        return gguf_tensor_name(self.name).removesuffix(".weight")


def parse_bits_map(spec: str | None) -> dict[str, float]:
    """'ffn_down=4.25,blk.0.attn_v=4.25' or the path of a file holding such pairs (one or more a
    line, '#' comments) -> {pattern: rate}.  A pattern names a tensor kind (ffn_down) or one tensor
    (blk.0.attn_v)."""
    if not spec:
        return {}
    text = spec
    if "=" not in spec:
        try:
            text = Path(spec).read_text(encoding="utf-8")
        except OSError as e:
            raise ConvertError(f"--bits-map: cannot read {spec}: {e.strerror}") from None
    out = {}
    for item in re.split(r"[,\n]", re.sub(r"#[^\n]*", "", text)):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        try:
            rate = float(value)
        except ValueError:
            rate = None
        if not sep or not key.strip() or rate not in PRESETS:
            raise ConvertError(f"--bits-map: bad entry {item.strip()!r}: want NAME=RATE with a rate in "
                               f"{', '.join(map(str, RATES))}")
        out[key.strip()] = rate
    return out


def _override(t: Tensor, bits_map: dict[str, float]) -> float | None:
    kind = t.gguf.split(".", 2)[-1]
    return bits_map.get(t.gguf, bits_map.get(kind))


def fixed_rates(tensors: list[Tensor], target: float, bits_map: dict[str, float]) -> dict[str, float]:
    """The starting point of the allocation: --bits-map's rates, the lowest rate elsewhere; raises
    ConvertError when a pattern matches nothing or the fixed rates already exceed the target."""
    for key in bits_map:
        if not any(key in (t.gguf, t.gguf.split(".", 2)[-1]) for t in tensors):
            raise ConvertError(f"--bits-map: {key!r} matches no quantized tensor (names like ffn_down or blk.0.attn_v)")
    if not RATES[0] <= target <= RATES[-1]:
        raise ConvertError(f"--bits {target} cannot be reached: PVQ rates go from {RATES[0]} to {RATES[-1]} "
                           f"bits per weight")
    rate = {t.name: _override(t, bits_map) or RATES[0] for t in tensors}
    low = sum(t.weights * rate[t.name] for t in tensors) / sum(t.weights for t in tensors)
    if low > target * (1 + 1e-9):
        raise ConvertError(f"--bits {target} is below what the --bits-map rates need ({low:.4f} bits per weight)")
    return rate


def allocate(tensors: list[Tensor], errors: dict[str, dict[float, float]], target: float,
             bits_map: dict[str, float] | None = None) -> dict[str, float]:
    """Rates {HF name: rate} with sum of n_t r_t <= target x weights; errors[name][rate] = E_t(rate)."""
    bits_map = bits_map or {}
    rate = fixed_rates(tensors, target, bits_map)
    budget = target * sum(t.weights for t in tensors)
    used = sum(t.weights * rate[t.name] for t in tensors)
    free = [t for t in tensors if _override(t, bits_map) is None]
    while True:
        best, best_gain = None, 0.0
        for t in free:
            r = rate[t.name]
            if r == RATES[-1]:
                continue
            up = RATES[RATES.index(r) + 1]
            extra = t.weights * (up - r)
            gain = (errors[t.name][r] - errors[t.name][up]) / extra
            if used + extra <= budget * (1 + 1e-9) and gain > best_gain:
                best, best_gain = t, gain
        if best is None:
            return rate
        up = RATES[RATES.index(rate[best.name]) + 1]
        used += best.weights * (up - rate[best.name])
        rate[best.name] = up


def tensor_errors(W: torch.Tensor, H: torch.Tensor, fisher: torch.Tensor, sample_rows: int = 64,
                  seed: int = 0) -> dict[float, float]:
    """E(rate) for W (R, n) with input Hessian H (n, n) and output Fisher diagonal `fisher` (R,), estimated from
    `sample_rows` random rows (a ratio estimator: the sampled rows' errors scaled by their share of the
    Fisher weight)."""
    R = W.shape[0]
    rows = torch.randperm(R, generator=torch.Generator().manual_seed(seed))[:sample_rows]
    Ws, f = W[rows].float(), fisher[rows].to(torch.float64)
    scale = float(fisher.sum()) / max(float(f.sum()), 1e-300)
    out = {}
    for r in RATES:
        lay = preset(r)
        E = (Ws - dequantize_matrix(quantize_matrix(Ws, lay.D, lay.K, lay.gain_bits))).to(torch.float64)
        out[r] = float((torch.einsum("ri,ij,rj->r", E, H, E) * f).sum()) * scale
    return out


def describe(rate: dict[str, float]) -> str:
    """Per-tensor rates {HF name: rate}, one line per block."""
    blocks: dict[str, list[str]] = {}
    for name, r in rate.items():
        blk, kind = gguf_tensor_name(name).removesuffix(".weight").split(".", 2)[1:]
        blocks.setdefault(blk, []).append(f"{kind}={r:g}")
    return "\n".join(f"  blk.{b}: " + " ".join(v) for b, v in blocks.items())
