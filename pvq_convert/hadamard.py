"""Hadamard matrices for any dimension the models use, and the fast transform.

A dimension n = m * 2^a (m odd) is split as n = h * p with p a power of two and h = m * 2^b the
smallest order for which a Hadamard matrix comes from Paley's constructions:
  Paley I   h = q + 1,      q a prime power, q = 3 mod 4   (12, 20, 24, 28, 32, 44, 48, 60, 68, ...)
  Paley II  h = 2 (q + 1),  q a prime power, q = 1 mod 4   (36, 52, 76, 108, 148, ...)
(h = 1 when n is a power of two). The transform is then B ⊗ H_p with H_p Sylvester's matrix,
H_p[i, j] = (-1)^popcount(i & j), done as a fast Walsh–Hadamard transform over contiguous blocks of
p followed by a dense h x h mix. Where no such h divides n, B = I_m (a block-diagonal transform of
m blocks of 2^a): still orthogonal, but it mixes only within blocks. docs/rotation.md lists the
choice for each model dimension and the exact convention the runtime follows.
"""
from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np
import torch


# --- finite fields GF(p^e), just enough for the quadratic character ------------------------------

def _prime_power(q: int) -> tuple[int, int] | None:
    """(p, e) with q = p^e, p prime, or None."""
    if q < 2:
        return None
    p = next(d for d in range(2, q + 1) if q % d == 0)
    e = 0
    while q % p == 0:
        q //= p
        e += 1
    return (p, e) if q == 1 else None


def _poly_mod(a: list[int], f: list[int], p: int) -> list[int]:
    """a mod f over GF(p); polynomials as coefficient lists, lowest degree first, f monic."""
    a = a[:]
    for top in range(len(a) - 1, len(f) - 2, -1):
        c = a[top] % p
        if c:
            for i, fi in enumerate(f):
                a[top - len(f) + 1 + i] = (a[top - len(f) + 1 + i] - c * fi) % p
    return [x % p for x in a[:len(f) - 1]] + [0] * max(0, len(f) - 1 - len(a))


def _irreducible(p: int, e: int) -> list[int]:
    """The first monic polynomial of degree e over GF(p) (in lexicographic order of its lower
    coefficients) with no monic factor of degree 1..e/2."""
    for low in itertools.product(range(p), repeat=e):
        f = list(low) + [1]
        if all(any(_poly_mod(f, list(g) + [1], p)) for d in range(1, e // 2 + 1)
               for g in itertools.product(range(p), repeat=d)):
            return f
    raise AssertionError("an irreducible polynomial exists for every degree")


def _quadratic_character(q: int) -> tuple[np.ndarray, np.ndarray]:
    """For GF(q), q = p^e: (chi, sub) where chi[x] is 0 for x = 0, +1 for a nonzero square, -1
    otherwise, and sub[x, y] = x - y. Elements are numbered by their base-p digits (coefficient i
    of the polynomial basis = digit i), so 0 is zero and, for e = 1, x is the integer x."""
    p, e = _prime_power(q)
    digits = np.array([[(x // p ** i) % p for i in range(e)] for x in range(q)])
    weights = p ** np.arange(e)
    sub = ((digits[:, None, :] - digits[None, :, :]) % p) @ weights
    f = _irreducible(p, e)
    chi = -np.ones(q, dtype=np.int64)
    chi[0] = 0
    for x in range(1, q):
        coeffs = np.convolve(digits[x], digits[x]).tolist()
        chi[int(np.dot(_poly_mod(coeffs, f, p), weights))] = 1
    return chi, sub


def _jacobsthal(q: int) -> np.ndarray:
    chi, sub = _quadratic_character(q)
    return chi[sub]  # Q[x, y] = chi(x - y)


def paley1(q: int) -> np.ndarray:
    """Hadamard matrix of order q + 1, q = 3 mod 4: H = I + S, S = [[0, 1^T], [-1, Q]] skew."""
    Q = _jacobsthal(q)
    S = np.zeros((q + 1, q + 1), dtype=np.int64)
    S[0, 1:], S[1:, 0], S[1:, 1:] = 1, -1, Q
    return np.eye(q + 1, dtype=np.int64) + S


def paley2(q: int) -> np.ndarray:
    """Hadamard matrix of order 2(q + 1), q = 1 mod 4: with the symmetric conference matrix
    C = [[0, 1^T], [1, Q]], H = C ⊗ [[1, 1], [1, -1]] + I ⊗ [[1, -1], [-1, -1]]."""
    Q = _jacobsthal(q)
    C = np.zeros((q + 1, q + 1), dtype=np.int64)
    C[0, 1:], C[1:, 0], C[1:, 1:] = 1, 1, Q
    return np.kron(C, [[1, 1], [1, -1]]) + np.kron(np.eye(q + 1, dtype=np.int64), [[1, -1], [-1, -1]])


def sylvester(p: int) -> np.ndarray:
    """H_p for p a power of two: H_1 = [1], H_2p = [[H_p, H_p], [H_p, -H_p]]."""
    H = np.ones((1, 1), dtype=np.int64)
    while H.shape[0] < p:
        H = np.kron([[1, 1], [1, -1]], H)
    return H


def _paley(h: int) -> tuple[str, int] | None:
    """How to build a Hadamard matrix of order h by Paley: ("paley1" | "paley2", q), or None."""
    if h % 4:
        return None
    pp = _prime_power(h - 1)
    if pp and (h - 1) % 4 == 3:
        return "paley1", h - 1
    pp = _prime_power(h // 2 - 1)
    if pp and (h // 2 - 1) % 4 == 1:
        return "paley2", h // 2 - 1
    return None


# --- the plan for a dimension --------------------------------------------------------------------

class HadamardPlan:
    """n = h * p; the transform is (B ⊗ H_p) / sqrt(r * p), with B the h x h base (entries -1/0/1, r
    nonzeros per row: r = h for a Hadamard base, 1 for the block-diagonal fallback B = I)."""

    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"Hadamard dimension must be positive, got {n}")
        self.n = n
        a = (n & -n).bit_length() - 1          # n = m * 2^a, m odd
        m = n >> a
        self.construction, self.q = "identity", 0
        for b in range(a + 1):
            h = m << b
            if m == 1:
                self.construction = "sylvester"
                break
            if (found := _paley(h)) is not None:
                self.construction, self.q = found
                break
        else:
            h = m                              # block-diagonal: m blocks of 2^a
        self.h, self.p = h, n // h

    @property
    def base(self) -> np.ndarray:
        """B (h x h) as int8."""
        return _base(self.h, self.construction, self.q)

    @property
    def scale(self) -> float:
        r = 1 if self.construction == "identity" else self.h
        return 1.0 / math.sqrt(r * self.p)

    def describe(self) -> str:
        kind = {"sylvester": "power of two", "identity": "block-diagonal fallback",
                "paley1": f"Paley I, q={self.q}", "paley2": f"Paley II, q={self.q}"}[self.construction]
        return f"{self.n} = {self.h} x {self.p} ({kind})"


@lru_cache(maxsize=None)
def _base(h: int, construction: str, q: int) -> np.ndarray:
    B = {"sylvester": lambda: np.ones((1, 1), dtype=np.int64),
         "identity": lambda: np.eye(h, dtype=np.int64),
         "paley1": lambda: paley1(q), "paley2": lambda: paley2(q)}[construction]()
    B = B.astype(np.int8)
    B.flags.writeable = False
    return B


@lru_cache(maxsize=None)
def plan(n: int) -> HadamardPlan:
    return HadamardPlan(n)


def hadamard_matrix(n: int) -> np.ndarray:
    """The unnormalized dense matrix B ⊗ H_p (int64); hadamard_transform(x) == scale * M @ x."""
    pl = plan(n)
    return np.kron(pl.base.astype(np.int64), sylvester(pl.p))


# --- transforms ----------------------------------------------------------------------------------

def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalized Walsh–Hadamard transform (Sylvester order) over the last axis, a power of two."""
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"fwht needs a power of two, got {n}")
    lead = x.shape[:-1]
    s = 1
    while s < n:
        v = x.reshape(*lead, n // (2 * s), 2, s)
        x = torch.stack((v[..., 0, :] + v[..., 1, :], v[..., 0, :] - v[..., 1, :]), dim=-2)
        s *= 2
    return x.reshape(*lead, n)


# Up to this size H_p is applied as a dense +-1 matmul: p flops per element but in BLAS, faster in
# torch than the log2(p) passes of fwht, which take over for larger p.
DENSE_SYLVESTER_MAX = 256


def hadamard_transform(x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """x -> (B ⊗ H_p) x / sqrt(r p) over the last axis (B^T with transpose), orthonormal,
    O(n (log p + h)). The transpose is the inverse, and equals the transform itself when B is
    symmetric (Sylvester, Paley II), not for Paley I."""
    pl = plan(x.shape[-1])
    y = x.contiguous().view(*x.shape[:-1], pl.h, pl.p)  # strided views fall off BLAS's fast paths
    if pl.p <= DENSE_SYLVESTER_MAX:
        y = y @ _as(sylvester(pl.p), x)          # H_p is symmetric
    else:
        y = fwht(y)
    if pl.h > 1:
        B = _as(pl.base, x)
        y = (B.T if transpose else B) @ y
    return y.reshape(x.shape) * pl.scale


def _as(M: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(M.astype(np.float64)).to(dtype=like.dtype, device=like.device)


def random_signs(n: int, seed: int) -> torch.Tensor:
    """n signs (+1/-1, float64) from torch's CPU generator seeded with `seed`."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n,), generator=g).to(torch.float64) * 2 - 1


def random_hadamard(n: int, seed: int) -> torch.Tensor:
    """Orthogonal Q = M diag(s) * scale (float64), M = hadamard_matrix(n), s = random_signs(n, seed)."""
    M = torch.from_numpy(hadamard_matrix(n).astype(np.float64))
    return M * random_signs(n, seed) * plan(n).scale


def random_hadamard_right(W: torch.Tensor, seed: int) -> torch.Tensor:
    """W @ random_hadamard(n, seed) without forming the matrix: rows w -> (M^T w) * s * scale."""
    return hadamard_transform(W, transpose=True) * random_signs(W.shape[-1], seed).to(W)


def random_hadamard_left_t(W: torch.Tensor, seed: int) -> torch.Tensor:
    """random_hadamard(n, seed)^T @ W for W (n, k): columns w -> s * (M^T w) * scale."""
    return hadamard_transform(W.T, transpose=True).T * random_signs(W.shape[0], seed).to(W)[:, None]
