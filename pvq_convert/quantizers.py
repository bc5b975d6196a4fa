"""Group quantizers for the GPTQ loop (gptq.py): PVQ, and the scalar baseline.

Each quantizes the columns it is handed, returns them dequantized exactly as the runtime will
decode them, and keeps the codes for the file.
"""
from __future__ import annotations

import torch

from . import pvq
from .pvq_format import Layout


class PVQQuantizer:
    """PVQ shapes and gains chosen to minimise the Hessian-weighted error of each group.

    The per-row fp16 scale is fixed before the columns are visited: it comes from an unweighted
    PVQ pass over the original rows (gain levels are relative to it)."""

    def __init__(self, W: torch.Tensor, lay: Layout, hessian_aware: bool = True):
        self.group, self.lay, self.hessian_aware = lay.D, lay, hessian_aware
        _, g_opt, self.scale, self.levels = pvq.shapes_and_row_scales(W.float(), lay.D, lay.K, lay.gain_bits)
        R, G = g_opt.shape
        self.index = torch.empty(R, G, dtype=torch.int64)
        self.code = torch.empty(R, G, dtype=torch.int64)

    def quantize(self, col: int, w: torch.Tensor, form: torch.Tensor, ahead: torch.Tensor) -> torch.Tensor:
        R, D = w.shape
        weights = form.expand(R, D, D) if self.hessian_aware else None
        y, code = pvq.encode_groups(w, self.lay.K, self.levels, self.scale, weights)
        g = col // D
        self.index[:, g] = pvq.encode_index(y, self.lay.K)
        self.code[:, g] = code
        return pvq.decode_groups(y, self.scale.float() * self.levels[code])

    def result(self) -> pvq.Quantized:
        return pvq.Quantized(self.index, self.code, self.scale, self.lay.D, self.lay.K, self.levels)


class ScalarQuantizer:
    """Round-to-nearest on a symmetric mid-rise grid of 2^bits levels, one fp16 scale per `block`
    weights of a row (3 bits per 64 = 3.25 bits per weight). Quantizes one column at a time; the
    scale of a block is chosen, as in GPTQ, when its first column comes up (from the current,
    error-updated weights), by a search that minimises the block's squared error."""

    SCALE_FACTORS = torch.linspace(0.5, 1.0, 21)

    def __init__(self, bits: int, block: int = 64):
        self.group, self.bits, self.block = 1, bits, block
        self.half = 1 << (bits - 1)
        self.scale = None

    def bits_per_weight(self) -> float:
        return self.bits + 16 / self.block

    def _choose_scale(self, w: torch.Tensor) -> torch.Tensor:
        """Per row of w (R, block): the fp16 step minimising the squared error of its rounding."""
        amax = w.abs().amax(1).clamp_min(1e-12)
        best, best_err = None, None
        for f in self.SCALE_FACTORS.tolist():
            s = (amax * f / (self.half - 0.5)).half().float().clamp_min(1e-12)
            err = ((self._round(w, s) - w) ** 2).sum(1)
            best = s if best is None else torch.where(err < best_err, s, best)
            best_err = err if best_err is None else torch.minimum(err, best_err)
        return best

    def _round(self, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        q = torch.clamp(torch.floor(w / s[:, None]), -self.half, self.half - 1)
        return (q + 0.5) * s[:, None]

    def quantize(self, col: int, w: torch.Tensor, form: torch.Tensor, ahead: torch.Tensor) -> torch.Tensor:
        if col % self.block == 0:
            self.scale = self._choose_scale(ahead[:, :self.block].float())
        return self._round(w.float(), self.scale)

    def rtn(self, W: torch.Tensor) -> torch.Tensor:
        """Plain round-to-nearest of a whole matrix, no Hessian (the `rtn` baseline)."""
        R, n = W.shape
        Wb = W.float().reshape(R * n // self.block, self.block)
        return self._round(Wb, self._choose_scale(Wb)).reshape(R, n)
