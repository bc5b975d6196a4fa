"""Gain quantization: b_a bits per group, levels placed by the Beta law of a group's energy share.

Derivation.  After coherence processing a row w of n weights looks i.i.d. N(0, s^2).  For a group
of D of them, ||w_g||^2 / ||w||^2 = X / (X + Y) with X ~ chi2(D), Y ~ chi2(n - D) independent, so the
share follows Beta(D/2, (n - D)/2) whatever s is.  We code the gain relative to a per-row scale,
rho = g / scale_row, with scale_row ~ ||w||: rho ~ sqrt(Beta(D/2, (n - D)/2)).

Optimality: the levels are Lloyd-Max for rho (minimum mean squared gain error) under that law.
They are computed on 2^16 equal-probability points of the law (quantiles from scipy's betaincinv),
starting from the quantile midpoints, by Lloyd iterations to convergence.  The levels are stored in
the GGUF file (float32), so the C side reads them and never recomputes them.

The per-row scale (fp16) absorbs the mean cosine between w and its shape: it is picked per row
among a few multiples of ||w|| to minimise the (weighted) gain error of that row.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from scipy.special import betaincinv

MAX_GAIN_BITS = 8


@lru_cache(maxsize=None)
def _gain_levels(n: int, D: int, bits: int) -> tuple[float, ...]:
    m = 1 << 16
    u = (np.arange(m) + 0.5) / m
    rho = np.sqrt(betaincinv(D / 2.0, (n - D) / 2.0, u))    # sorted, equal probability mass
    L = 1 << bits
    levels = rho[((np.arange(L) + 0.5) / L * m).astype(np.int64)]
    csum = np.concatenate([[0.0], np.cumsum(rho)])
    for _ in range(1000):
        edges = np.searchsorted(rho, (levels[1:] + levels[:-1]) / 2)
        lo = np.concatenate([[0], edges])
        hi = np.concatenate([edges, [m]])
        cnt = hi - lo
        new = np.where(cnt > 0, (csum[hi] - csum[lo]) / np.maximum(cnt, 1), levels)
        done = np.max(np.abs(new - levels)) < 1e-12
        levels = new
        if done:
            break
    return tuple(float(np.float32(v)) for v in levels)


def gain_levels(n: int, D: int, bits: int) -> torch.Tensor:
    """Lloyd-Max levels (float32, increasing, length 2^bits) for rho = g / ||row|| of a D-group in a row of n."""
    if not (1 <= bits <= MAX_GAIN_BITS):
        raise ValueError(f"gain bits must be in [1, {MAX_GAIN_BITS}], got {bits}")
    if not (1 <= D < n):
        raise ValueError(f"group size D={D} must be in [1, n) for rows of n={n}")
    return torch.tensor(_gain_levels(n, D, bits), dtype=torch.float32)


def nearest_level(rho: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the nearest level (levels increasing) for each entry of rho."""
    mid = (levels[1:] + levels[:-1]) / 2
    return torch.bucketize(rho.contiguous(), mid.to(rho)).to(torch.int64)


ROW_SCALE_FACTORS = torch.linspace(0.80, 1.04, 25)


def choose_row_scale(g_opt: torch.Tensor, curv: torch.Tensor, row_norm: torch.Tensor,
                     levels: torch.Tensor) -> torch.Tensor:
    """Per-row fp16 scale minimising sum_g curv * (scale * level[code] - g_opt)^2.

    g_opt (R, G): each group's best continuous gain for its shape; curv (R, G): the error's
    curvature in the gain (y^T H y / ||y||^2; 1 without weights); row_norm (R,): ||w_row||.
    Candidates are multiples of ||w_row||, rounded to fp16 before they are scored.
    """
    lv = levels.to(g_opt)
    best_err = torch.full_like(row_norm, float("inf"), dtype=torch.float32)
    best = torch.zeros_like(row_norm, dtype=torch.float16)
    for f in ROW_SCALE_FACTORS.tolist():
        s = (row_norm * f).to(torch.float16)
        sf = s.to(torch.float32).clamp_min(1e-30)
        code = nearest_level(g_opt / sf[:, None], lv)
        err = (curv * (sf[:, None] * lv[code] - g_opt) ** 2).sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, s, best)
    return best
