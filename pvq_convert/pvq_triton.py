"""The greedy PVQ search (pvq.nearest_point) as one Triton kernel, and a dispatcher with a torch fallback.

pvq.nearest_point runs its pulse loop in Python: on a GPU that is ~15 small kernel launches per
pulse and a host sync, K + 2 times per call, and the GPTQ loop calls it once per D columns.  Here the
loop runs inside one kernel, one program per block of groups, each group's state in registers.

Split of the work (this is what makes the results bit-identical to the reference):
  torch  the start, through the reference's own pvq.search_start (signs, the L1 projection rounded
         down, H|w|, H y), then w^T H y and y^T H y as the reference sums them (float order
         belongs to torch);
  kernel the pulse additions and the refine moves: only elementwise float ops (each an exact mirror
         of the reference's expression, in the same order, divisions correctly rounded with
         tl.div_rn, no FMA contraction) and exact selections, so it reproduces the reference's
         floats and therefore its integer points.
Ties: both take the first maximum (argmax over i, refine moves over i * D + j in row-major order).
One documented difference, diagonal weights only: after a refine pass the reference recomputes
H y = diag * y for the whole batch if any group moved, else stops; the kernel recomputes it for
every group after every pass.  Such a recomputed value can differ from the incremental one by an
ulp, so with diagonal weights a group may in rare cases end on a different (equally good to float
tolerance) point.  Unweighted and full quadratic forms (what GPTQ uses) match exactly.
"""
from __future__ import annotations

import torch

from . import pvq

try:
    import triton
    import triton.language as tl
except ImportError:                     # the torch reference still works without Triton
    triton = None

# Elements of the (groups x D x D) refine tile held by one program.
_TILE = 2048


def nearest_point_fast(w: torch.Tensor, K: int, weights: torch.Tensor | None = None,
                       refine: int = 2) -> torch.Tensor:
    """pvq.nearest_point, through the Triton kernel for CUDA tensors with D a power of two <= 32,
    through the torch reference otherwise.  Same arguments, same result."""
    D = w.shape[1] if w.dim() == 2 else 0
    if triton is not None and w.is_cuda and D in (2, 4, 8, 16, 32):
        return nearest_point_triton(w, K, weights, refine)
    return pvq.nearest_point(w, K, weights, refine)


def nearest_point_triton(w: torch.Tensor, K: int, weights: torch.Tensor | None = None,
                         refine: int = 2) -> torch.Tensor:
    """pvq.nearest_point with the search loop in the Triton kernel (CUDA tensors, or CPU tensors
    when TRITON_INTERPRET=1 was set before triton was first imported).  D must be a power of two."""
    if triton is None:
        raise RuntimeError("nearest_point_triton: triton is not installed")
    if w.dim() != 2:
        raise ValueError(f"w must be (G, D), got shape {tuple(w.shape)}")
    G, D = w.shape
    if D not in (2, 4, 8, 16, 32):
        raise ValueError(f"the Triton search needs D in 2, 4, 8, 16, 32 (got {D})")
    if K < 0 or refine < 0:
        raise ValueError(f"K={K} and refine={refine} must be non-negative")
    if G == 0:
        return torch.empty(0, D, dtype=torch.int64, device=w.device)
    sign, y, hw, hdiag, Hs, hy = pvq.search_start(w, K, weights)
    num = (hw * y).sum(1)
    den = (hy * y).sum(1)
    y, hw, hdiag, hy = (t.contiguous() for t in (y, hw, hdiag, hy))
    full = Hs is not None
    hs = Hs.contiguous() if full else hdiag      # an unused pointer when not full
    block_g = max(1, _TILE // (D * D))
    _search_kernel[(triton.cdiv(G, block_g),)](
        y, hw, hdiag, hy, num.contiguous(), den.contiguous(), hs, G, K,
        D=D, BLOCK_G=block_g, FULL=full, REFINE=refine, enable_fp_fusion=False)
    return (y * sign).to(torch.int64)


if triton is not None:

    @triton.jit
    def _pick(x, sel):
        """x[g, best[g]] for a one-hot mask sel (exact: one term, the others zero)."""
        return tl.sum(tl.where(sel, x, 0.0), 1)

    @triton.jit
    def _first_argmax(score, idx, n: tl.constexpr):
        """First index of the row maximum (torch.argmax's tie rule); score (BG, D), idx (D,)."""
        m = tl.max(score, 1)
        return tl.min(tl.where(score == m[:, None], idx[None, :], n), 1)

    @triton.jit
    def _search_kernel(y_ptr, hw_ptr, hd_ptr, hy_ptr, num_ptr, den_ptr, hs_ptr, G, K,
                       D: tl.constexpr, BLOCK_G: tl.constexpr, FULL: tl.constexpr,
                       REFINE: tl.constexpr):
        """Greedy pulse additions then REFINE single-pulse moves for BLOCK_G groups; y updated in place.

        Per group g: y (D,) >= 0 pulses, hw = H|w|, hd = diag H, hy = H y, num = w^T H y,
        den = y^T H y; hs (D, D) = sign-flipped H when FULL.  Objective num^2 / den."""
        g = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
        i = tl.arange(0, D)
        ok = g < G
        off = g[:, None] * D + i[None, :]
        y = tl.load(y_ptr + off, mask=ok[:, None], other=0.0)
        hw = tl.load(hw_ptr + off, mask=ok[:, None], other=0.0)
        hd = tl.load(hd_ptr + off, mask=ok[:, None], other=1.0)
        hy = tl.load(hy_ptr + off, mask=ok[:, None], other=0.0)
        num = tl.load(num_ptr + g, mask=ok, other=0.0)
        den = tl.load(den_ptr + g, mask=ok, other=1.0)
        diag = i[:, None] == i[None, :]
        if FULL:
            hs = tl.load(hs_ptr + g[:, None, None] * (D * D) + i[None, :, None] * D + i[None, None, :],
                         mask=ok[:, None, None], other=0.0)
        else:
            hs = tl.where(diag[None, :, :], hd[:, :, None], 0.0)

        # Add the missing pulses one at a time where num^2 / den rises most.
        missing = tl.where(ok, K - tl.sum(y, 1), 0.0).to(tl.int32)
        for s in range(tl.max(missing, 0)):
            n2 = num[:, None] + hw
            d2 = den[:, None] + 2.0 * hy + hd
            sel = i[None, :] == _first_argmax(tl.div_rn(n2 * n2, tl.maximum(d2, 1e-30)), i, D)[:, None]
            step = tl.where(missing > s, 1.0, 0.0)
            y = tl.where(sel, y + step[:, None], y)
            num = num + step * _pick(hw, sel)
            den = den + step * (2.0 * _pick(hy, sel) + _pick(hd, sel))
            if FULL:
                hy = hy + step[:, None] * tl.sum(tl.where(sel[:, None, :], hs, 0.0), 2)
            else:
                hy = tl.where(sel, hy + step[:, None] * hd, hy)

        # Refine: move one pulse from i (y_i >= 1) to j where that raises the objective.
        flat = i[:, None] * D + i[None, :]
        for _ in tl.static_range(REFINE):
            up = hd - 2.0 * hy
            dn = hd + 2.0 * hy
            n2 = (num[:, None, None] - hw[:, :, None]) + hw[:, None, :]
            d2 = ((den[:, None, None] + up[:, :, None]) + dn[:, None, :]) - 2.0 * hs
            score = tl.where(y[:, :, None] > 0, tl.div_rn(n2 * n2, tl.maximum(d2, 1e-30)), 0.0)
            m = tl.max(tl.max(score, 2), 1)
            best = tl.min(tl.min(tl.where(score == m[:, None, None], flat[None, :, :], D * D), 2), 1)
            gain = m > tl.div_rn(num * num, tl.maximum(den, 1e-30)) * (1 + 1e-6)
            step = tl.where(gain & ok, 1.0, 0.0)
            seli = i[None, :] == (best // D)[:, None]
            selj = i[None, :] == (best % D)[:, None]
            y = tl.where(seli, y - step[:, None], y)
            y = tl.where(selj, y + step[:, None], y)
            num = num + step * (_pick(hw, selj) - _pick(hw, seli))
            hij = tl.sum(tl.sum(tl.where(flat[None, :, :] == best[:, None, None], hs, 0.0), 2), 1)
            den = den + step * ((_pick(up, seli) + _pick(dn, selj)) - 2.0 * hij)
            if FULL:
                hy = hy + step[:, None] * (tl.sum(tl.where(selj[:, None, :], hs, 0.0), 2)
                                           - tl.sum(tl.where(seli[:, None, :], hs, 0.0), 2))
            else:
                hy = hd * y
        tl.store(y_ptr + off, y, mask=ok[:, None])
