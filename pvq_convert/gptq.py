"""GPTQ with groups of columns: quantize D columns at a time, push the error onto the columns not
yet quantized through the Cholesky factor of H^-1.

With H^-1 = U^T U (U upper triangular) and the columns processed left to right, the D x D block of
the inverse Hessian of the columns still free, restricted to the current group c, is U_cc^T U_cc.
Fixing the group at W_c - E costs E (U_cc^T U_cc)^-1 E^T = ||E U_cc^-1||^2 per row once the later
columns are re-optimised, and that re-optimisation is W_rest -= (E U_cc^-1) U_c,rest. For D = 1 this
is GPTQ's scalar update err / U_jj * U_j,rest. A group quantizer receives the quadratic form
(U_cc^T U_cc)^-1 so it can choose codes that minimise this error, not the plain L2 error.
"""
from __future__ import annotations

from typing import Protocol

import torch


class GroupQuantizer(Protocol):
    group: int  # columns quantized together

    def quantize(self, col: int, w: torch.Tensor, form: torch.Tensor, ahead: torch.Tensor) -> torch.Tensor:
        """Quantize columns [col, col + group) of every row: w (R, group) -> dequantized (R, group).
        form (group, group): the error's quadratic form (rows share it); ahead: the current
        (error-updated) columns from col to the end of the block, for per-block scales. Keeps its
        own codes."""


def inverse_hessian_factor(H: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """Upper Cholesky factor U of (H + damp * mean(diag H) * I)^-1, in float64."""
    H = H.to(torch.float64).clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    H += damp * torch.diagonal(H).mean() * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    L = torch.linalg.cholesky(H)
    del H       # two n x n float64 matrices at a time, not four: 0.6 GB each for an FFN width of 8960
    H_inv = torch.cholesky_inverse(L)
    del L
    return torch.linalg.cholesky(H_inv, upper=True)


def gptq(W: torch.Tensor, H: torch.Tensor, quantizer: GroupQuantizer, damp: float = 0.01,
         block: int = 128, U: torch.Tensor | None = None) -> torch.Tensor:
    """Quantize W (R, n) given the Hessian H (n, n) of its input; returns the dequantized W.
    U: inverse_hessian_factor(H, damp) when the caller has it already (row blocks of one matrix share it).

    Columns whose input is always zero (H_ii = 0) are zeroed first: they cannot affect the output.
    Updates are applied lazily: inside a block of `block` columns, then once to the rest."""
    R, n = W.shape
    D = quantizer.group
    if n % D or block % D:
        raise ValueError(f"{n} columns and the block of {block} must be multiples of the group {D}")
    W = W.to(torch.float64).clone()
    W[:, torch.diagonal(H) == 0] = 0
    if U is None:
        U = inverse_hessian_factor(H, damp)
    Q = torch.empty_like(W)
    for b0 in range(0, n, block):
        b1 = min(n, b0 + block)
        Wb, Ub = W[:, b0:b1].clone(), U[b0:b1, b0:b1]
        Err = torch.empty_like(Wb)
        for c0 in range(0, b1 - b0, D):
            c = slice(c0, c0 + D)
            Ucc_inv = torch.linalg.inv(Ub[c, c])
            form = Ucc_inv @ Ucc_inv.T
            q = quantizer.quantize(b0 + c0, Wb[:, c].float(), form.float(), Wb[:, c0:].float()).to(W)
            Q[:, b0 + c0:b0 + c0 + D] = q
            Err[:, c] = (Wb[:, c] - q) @ Ucc_inv
            Wb[:, c0 + D:] -= Err[:, c] @ Ub[c, c0 + D:]
        W[:, b1:] -= Err @ U[b0:b1, b1:]
    return Q


def hessian_error(W: torch.Tensor, Q: torch.Tensor, H: torch.Tensor) -> float:
    """tr((W - Q) H (W - Q)^T): the layer's output error summed over the calibration inputs."""
    E = (W - Q).to(torch.float64)
    return float(torch.einsum("ri,ij,rj->", E, H.to(torch.float64), E))
