"""The PVQ codec: pyramid counts, the index enumeration, the greedy encoder and the decoder.

A group of D weights is stored as a gain and a shape: w ~ g * y / ||y||_2 with y on the pyramid
P(D, K) = { y in Z^D : sum |y_i| = K }.  The shape is an index in [0, N(D, K)).

Enumeration ("halves", docs/format.md): a vector of dimension d >= 2 splits into a first half of
d1 = d // 2 coordinates and a second half of d2 = d - d1.  With k1 pulses in the first half,

    index(y) = sum_{j < k1} N(d1, j) * N(d2, k - j)  +  index(first) * N(d2, k - k1)  +  index(second)

and for d = 1: index(0) = 0, index(+k) = 0, index(-k) = 1.  Decoding finds k1 from the cumulative
counts, then splits the remainder by one division; the leaves are small sub-vectors that the C
kernels read from lookup tables.

Integer arithmetic is exact: N(D, K) in Python ints, the torch paths in int64 (the format caps an
index at 56 bits, see pvq_format.MAX_FIELD_BITS).
"""
from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=None)
def pyramid_count(d: int, k: int) -> int:
    """N(d, k): number of integer vectors of dimension d with L1 norm k (exact Python int)."""
    if d < 0 or k < 0:
        raise ValueError(f"pyramid_count: d={d}, k={k} must be non-negative")
    if k == 0:
        return 1
    if d == 0:
        return 0
    # Iterative over d to stay clear of the recursion limit for large (d, k).
    prev = [1] + [0] * k                       # N(0, .)
    for _ in range(d):
        cur = [1] * (k + 1)
        for j in range(1, k + 1):
            cur[j] = prev[j] + cur[j - 1] + prev[j - 1]
        prev = cur
    return prev[k]


def split_dims(d: int) -> tuple[int, int]:
    """The halves split used by the enumeration: (d // 2, d - d // 2)."""
    return d // 2, d - d // 2


def tree_dims(d: int) -> list[int]:
    """Every dimension that appears in the recursive split of d (d itself included), descending."""
    out, todo = set(), [d]
    while todo:
        x = todo.pop()
        if x in out:
            continue
        out.add(x)
        if x >= 2:
            todo.extend(split_dims(x))
    return sorted(out, reverse=True)


# ---------------------------------------------------------------- exact scalar reference (Python ints)

def index_of(y: list[int]) -> int:
    """Index of pyramid point y (a list of ints) in the halves enumeration."""
    d, k = len(y), sum(abs(v) for v in y)
    if d == 1:
        return 0 if y[0] >= 0 else 1
    d1, d2 = split_dims(d)
    k1 = sum(abs(v) for v in y[:d1])
    base = sum(pyramid_count(d1, j) * pyramid_count(d2, k - j) for j in range(k1))
    return base + index_of(y[:d1]) * pyramid_count(d2, k - k1) + index_of(y[d1:])


def point_of(index: int, d: int, k: int) -> list[int]:
    """Pyramid point of P(d, k) with the given index (inverse of index_of)."""
    if not 0 <= index < pyramid_count(d, k):
        raise ValueError(f"index {index} out of range for N({d},{k})={pyramid_count(d, k)}")
    if d == 1:
        return [k if index == 0 else -k]
    d1, d2 = split_dims(d)
    k1 = 0
    while True:
        block = pyramid_count(d1, k1) * pyramid_count(d2, k - k1)
        if index < block:
            break
        index -= block
        k1 += 1
    n2 = pyramid_count(d2, k - k1)
    return point_of(index // n2, d1, k1) + point_of(index % n2, d2, k - k1)


# ---------------------------------------------------------------- vectorised enumeration (torch int64)

class Tables:
    """Count tables for one (D, K) as int64 tensors on a device, shared by index encode/decode.

    count[d][k]   = N(d, k)                                  for every d in the split tree, k <= K
    cum[d][k][j]  = sum_{i < j} N(d1, i) * N(d2, k - i)      for j <= k + 1; cum[d][k][j] = 2^62
                    for j > k + 1 (so that a search for "largest j with cum <= r" stops at k)
    """

    def __init__(self, D: int, K: int, device: torch.device | str = "cpu"):
        if pyramid_count(D, K) >= 1 << 62:
            raise ValueError(f"N({D},{K}) does not fit the 62-bit integer tables")
        self.D, self.K, self.device = D, K, torch.device(device)
        self.count, self.cum = {}, {}
        big = 1 << 62
        for d in tree_dims(D):
            self.count[d] = torch.tensor([pyramid_count(d, k) for k in range(K + 1)],
                                         dtype=torch.int64, device=self.device)
            if d >= 2:
                d1, d2 = split_dims(d)
                rows = []
                for k in range(K + 1):
                    acc, row = 0, []
                    for j in range(K + 2):
                        row.append(acc if j <= k + 1 else big)
                        if j <= k:
                            acc += pyramid_count(d1, j) * pyramid_count(d2, k - j)
                    rows.append(row)
                self.cum[d] = torch.tensor(rows, dtype=torch.int64, device=self.device)


@lru_cache(maxsize=64)
def tables(D: int, K: int, device: str = "cpu") -> Tables:
    return Tables(D, K, device)


def encode_index(y: torch.Tensor, K: int) -> torch.Tensor:
    """Indices (int64, shape (G,)) of pyramid points y (integer tensor (G, D), each with L1 norm K)."""
    G, D = y.shape
    t = tables(D, K, str(y.device))
    y = y.to(torch.int64)
    k = y.abs().sum(1)
    if not bool((k == K).all()):
        raise ValueError("encode_index: every row of y must have L1 norm K")
    return _index_rec(y, k, t)


def _index_rec(y: torch.Tensor, k: torch.Tensor, t: Tables) -> torch.Tensor:
    d = y.shape[1]
    if d == 1:
        return (y[:, 0] < 0).to(torch.int64)
    d1, d2 = split_dims(d)
    k1 = y[:, :d1].abs().sum(1)
    k2 = k - k1
    base = t.cum[d][k, k1]
    i1 = _index_rec(y[:, :d1], k1, t)
    i2 = _index_rec(y[:, d1:], k2, t)
    return base + i1 * t.count[d2][k2] + i2


def decode_index(index: torch.Tensor, D: int, K: int) -> torch.Tensor:
    """Pyramid points (int64 (G, D)) for indices (int64 (G,)); indices must be in [0, N(D, K))."""
    t = tables(D, K, str(index.device))
    index = index.to(torch.int64)
    if bool(((index < 0) | (index >= pyramid_count(D, K))).any()):
        raise ValueError(f"decode_index: index out of range [0, N({D},{K}))")
    k = torch.full_like(index, K)
    out = torch.empty(index.shape[0], D, dtype=torch.int64, device=index.device)
    _decode_rec(index, k, D, 0, out, t)
    return out


def _decode_rec(r: torch.Tensor, k: torch.Tensor, d: int, col: int, out: torch.Tensor, t: Tables):
    if d == 1:
        out[:, col] = torch.where(r == 0, k, -k)
        return
    d1, d2 = split_dims(d)
    cum = t.cum[d][k]                                   # (G, K + 2)
    k1 = (cum <= r[:, None]).sum(1) - 1                 # largest j with cum[j] <= r
    k2 = k - k1
    r = r - cum.gather(1, k1[:, None])[:, 0]
    n2 = t.count[d2][k2]
    _decode_rec(r // n2, k1, d1, col, out, t)
    _decode_rec(r % n2, k2, d2, col + d1, out, t)


# ---------------------------------------------------------------- encoder: nearest pyramid point

def search_start(w: torch.Tensor, K: int, weights: torch.Tensor | None):
    """The search's starting state for rows w (G, D): (sign, y, hw, hdiag, Hs, hy).

    Works in |w| space (y >= 0) with H flipped by the signs, so that signs never need tracking:
    y is |w| projected onto the L1 sphere of radius K and rounded down (sum <= K), hw = H |w|,
    hdiag = diag H, hy = H y; Hs is the sign-flipped (G, D, D) form, None unless weights is 3-D.
    Shared by nearest_point and the Triton kernel's launcher, which must start from the same floats."""
    w = w.to(torch.float32)
    sign = torch.where(w < 0, -1.0, 1.0).to(w)
    a = w.abs()
    l1 = a.sum(1, keepdim=True)
    y = torch.floor(a * (K / l1.clamp_min(1e-30)))
    y[l1[:, 0] <= 0] = 0
    Hs = None
    if weights is None:
        hw, hdiag = a, torch.ones_like(a)
    elif weights.dim() == 2:
        hw, hdiag = weights.to(a) * a, weights.to(a)
    elif weights.dim() == 3:
        Hs = weights.to(a) * sign[:, :, None] * sign[:, None, :]
        hw = torch.einsum("gij,gj->gi", Hs, a)
        hdiag = torch.diagonal(Hs, dim1=1, dim2=2)
    else:
        raise ValueError("weights must be (G, D) or (G, D, D)")
    hy = torch.einsum("gij,gj->gi", Hs, y) if Hs is not None else hdiag * y
    return sign, y, hw, hdiag, Hs, hy


def nearest_point(w: torch.Tensor, K: int, weights: torch.Tensor | None = None,
                  refine: int = 2) -> torch.Tensor:
    """Greedy nearest pyramid point to each row of w (float (G, D)) -> int64 (G, D), L1 norm K.

    Unweighted: maximise the cosine between w and y.  With `weights`, maximise the weighted
    cosine (w^T H y)^2 / (y^T H y), the quantity that the best gain leaves as error reduction
    for the error (w - g y)^T H (w - g y):
      weights (G, D)    -> H = diag(weights[g])        (e.g. the Hessian diagonal)
      weights (G, D, D) -> H = weights[g]              (a per-group quadratic form, positive definite)
    Start: project |w| onto the L1 sphere of radius K and round down (sum <= K), then add the
    missing pulses one at a time where they raise the objective most (Fischer / Opus search).
    Then up to `refine` passes move single pulses (one coordinate to another) where that raises
    the objective, which repairs most of the greedy's misses (weighted objectives especially).
    """
    G, D = w.shape
    sign, y, hw, hdiag, Hs, hy = search_start(w, K, weights)
    num = (hw * y).sum(1)                               # w^T H y
    den = (hy * y).sum(1)                               # y^T H y
    missing = (K - y.sum(1)).to(torch.int64)
    rows = torch.arange(G, device=w.device)
    for _ in range(int(missing.max().item()) if G else 0):
        active = missing > 0
        # Adding one pulse at i: num + hw_i, den + 2 hy_i + H_ii.  Compare (num')^2 / den'.
        n2 = num[:, None] + hw
        d2 = den[:, None] + 2 * hy + hdiag
        score = n2 * n2 / d2.clamp_min(1e-30)
        best = score.argmax(1)
        step = active.to(y)
        y[rows, best] += step
        num = num + step * hw[rows, best]
        den = den + step * (2 * hy[rows, best] + hdiag[rows, best])
        if Hs is not None:
            hy = hy + step[:, None] * Hs[rows, :, best]
        else:
            hy[rows, best] += step * hdiag[rows, best]
        missing = missing - active.to(torch.int64)
    # A group whose best move did not pay has nothing new to try in the next pass (its state is
    # unchanged), so each pass after the first scores only the groups that moved.
    moved = torch.ones(G, dtype=torch.bool, device=y.device)
    for _ in range(refine):
        sel = slice(None) if bool(moved.all()) else moved.nonzero()[:, 0]
        score, best = _best_moves(y[sel], num[sel], den[sel], hw[sel], hy[sel], hdiag[sel],
                                  Hs[sel] if Hs is not None else None)
        gain = score > (num[sel] * num[sel] / den[sel].clamp_min(1e-30)) * (1 + 1e-6)
        if not bool(gain.any()):
            break
        sub = rows[sel]
        i, j = best // D, best % D
        step = gain.to(y)
        y[sub, i] -= step
        y[sub, j] += step
        num[sub] = num[sel] + step * (hw[sub, j] - hw[sub, i])
        hij = Hs[sub, i, j] if Hs is not None else torch.where(i == j, hdiag[sub, i], 0.0)
        den[sub] = den[sel] + step * ((hdiag - 2 * hy)[sub, i] + (hdiag + 2 * hy)[sub, j] - 2 * hij)
        moved = torch.zeros_like(moved)
        moved[sub] = gain
        if Hs is not None:
            hy[sub] = hy[sel] + step[:, None] * (Hs[sub, :, j] - Hs[sub, :, i])
        else:
            # Recomputed for every group: a group whose H y changes by an ulp must be scored again.
            new_hy = hdiag * y
            moved |= (new_hy != hy).any(1)
            hy = new_hy
    return (y * sign).to(torch.int64)


def _best_moves(y, num, den, hw, hy, hdiag, Hs):
    """For each group, the best single-pulse move from i (y_i >= 1) to j: (its objective, i * D + j).

    Moving changes w^T H y to num + hw_j - hw_i and y^T H y to den - 2 hy_i + H_ii + 2 hy_j + H_jj
    - 2 H_ij (H = diag(hdiag) where Hs is None).  Ties go to the first (i, j) in row-major order."""
    G, D = y.shape
    n2 = num[:, None, None] - hw[:, :, None] + hw[:, None, :]
    d2 = den[:, None, None] + (hdiag - 2 * hy)[:, :, None] + (hdiag + 2 * hy)[:, None, :]
    if Hs is not None:
        d2 -= 2 * Hs
    else:
        d2.diagonal(dim1=1, dim2=2).sub_(2 * hdiag)
    score = n2.mul_(n2).div_(d2.clamp_min_(1e-30)).masked_fill_((y <= 0)[:, :, None], 0.0).view(G, D * D)
    best = score.argmax(1)
    return score.gather(1, best[:, None])[:, 0], best


def decode_groups(y: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """Float32 weights of groups: gain[g] / sqrt(sum y^2) * y, rounded exactly as the C decoder does.

    The rounding sequence (docs/format.md): q = float(sum y^2) (exact), s = gain / sqrtf(q),
    w_i = float(y_i) * s, each a single IEEE float32 operation.
    """
    yf = y.to(torch.float32)
    # sqrtf(q) correctly rounded: torch's float32 sqrt on CPU can be 1 ulp off, a float64 sqrt
    # rounded to float32 is exact (q is an integer, exact in both formats).
    root = torch.sqrt((y * y).sum(1).to(torch.float64)).to(torch.float32)
    s = gain.to(torch.float32) / root
    return yf * s[:, None]


# ---------------------------------------------------------------- a whole matrix

class Quantized:
    """A PVQ-coded matrix: index (R, G) int64, code (R, G) int64 gain codes, scale (R,) fp16."""

    def __init__(self, index, code, scale, D, K, levels):
        self.index, self.code, self.scale = index, code, scale
        self.D, self.K, self.levels = D, K, levels

    @staticmethod
    def cat_rows(parts: list["Quantized"]) -> "Quantized":
        """The matrix whose rows are those of `parts` in order (same D, K and levels)."""
        first = parts[0]
        return Quantized(torch.cat([p.index for p in parts]), torch.cat([p.code for p in parts]),
                         torch.cat([p.scale for p in parts]), first.D, first.K, first.levels)

    def state(self) -> dict:
        """Its tensors and numbers, in the form torch.load(weights_only=True) reads back (Quantized.of_state)."""
        return {"index": self.index, "code": self.code, "scale": self.scale, "D": self.D, "K": self.K,
                "levels": self.levels}

    @staticmethod
    def of_state(s: dict) -> "Quantized":
        return Quantized(s["index"], s["code"], s["scale"], s["D"], s["K"], s["levels"])

    def to(self, device: str | torch.device) -> "Quantized":
        return Quantized(self.index.to(device), self.code.to(device), self.scale.to(device), self.D, self.K,
                         self.levels.to(device))


def encode_groups(w: torch.Tensor, K: int, levels: torch.Tensor, row_scale: torch.Tensor,
                  weights: torch.Tensor | None = None):
    """Shape and gain code of groups w (G, D) whose rows have the given (fp16-rounded) scale (G,).

    This is the step the Hessian pipeline calls D columns at a time: `weights` is the group's
    diagonal (G, D) or quadratic form (G, D, D) of the error, as in nearest_point.  The gain code
    is the level nearest to the best continuous gain for the chosen shape, which minimises the
    weighted error too (the error is a parabola in the gain).  Returns (y (G, D) int64, code (G,)).
    """
    from .pvq_gain import nearest_level
    from .pvq_triton import nearest_point_fast  # Triton on CUDA tensors, this module's search elsewhere
    y = nearest_point_fast(w, K, weights)
    g_opt, _ = _best_gain(w, y, weights)
    code = nearest_level(g_opt / row_scale.to(torch.float32).clamp_min(1e-30), levels.to(w.device))
    return y, code


def _best_gain(w, y, weights):
    """g* = w^T H u / u^T H u with u = y / ||y||, and the curvature u^T H u."""
    u = y.to(torch.float32)
    u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-30)
    w = w.to(torch.float32)
    if weights is None:
        return (w * u).sum(1), torch.ones_like(u[:, 0])
    if weights.dim() == 2:
        hu = weights.to(u) * u
    else:
        hu = torch.einsum("gij,gj->gi", weights.to(u), u)
    curv = (hu * u).sum(1)
    return (w * hu).sum(1) / curv.clamp_min(1e-30), curv


def quantize_matrix(W: torch.Tensor, D: int, K: int, gain_bits: int, diag: torch.Tensor | None = None,
                    quad: torch.Tensor | None = None, chunk_groups: int = 1 << 18) -> Quantized:
    """PVQ-code a matrix W (R, n) with groups of D along rows, Beta/Lloyd-Max gains and fp16 row scales.

    Optional error weights, as in nearest_point (at most one):
      diag  broadcastable to (R, n/D, D), e.g. a Hessian diagonal reshaped to (n/D, D);
      quad  broadcastable to (R, n/D, D, D), e.g. the Hessian's D x D diagonal blocks (n/D, D, D).
    Shape, gain code and row scale then minimise the weighted error of each group / row.
    """
    from .pvq_gain import nearest_level
    y, g_opt, scale, levels = shapes_and_row_scales(W, D, K, gain_bits, diag, quad, chunk_groups)
    R, G = g_opt.shape
    code = nearest_level(g_opt / scale.to(torch.float32).clamp_min(1e-30)[:, None], levels)
    index = torch.empty(R * G, dtype=torch.int64, device=W.device)
    for s in range(0, R * G, chunk_groups):
        e = min(R * G, s + chunk_groups)
        index[s:e] = encode_index(y[s:e], K)
    return Quantized(index.view(R, G), code, scale, D, K, levels)


def shapes_and_row_scales(W: torch.Tensor, D: int, K: int, gain_bits: int, diag: torch.Tensor | None = None,
                          quad: torch.Tensor | None = None, chunk_groups: int = 1 << 18):
    """The first half of quantize_matrix (same arguments): the shapes y (R * G, D), each group's best
    continuous gain g_opt (R, G), the fp16 row scales (R,) and the gain levels; no index encoding
    (the Hessian pipeline needs only the scales)."""
    from .pvq_gain import gain_levels, choose_row_scale
    R, n = W.shape
    if n % D:
        raise ValueError(f"row length {n} is not a multiple of D={D}")
    if diag is not None and quad is not None:
        raise ValueError("give diag or quad weights, not both")
    G = n // D
    levels = gain_levels(n, D, gain_bits).to(W.device)
    Wg = W.to(torch.float32).reshape(R * G, D)
    wts = None                          # a broadcast view, gathered chunk by chunk (no R x G copy)
    if diag is not None:
        wts = diag.to(W.device, torch.float32).expand(R, G, D)
    elif quad is not None:
        wts = quad.to(W.device, torch.float32).expand(R, G, D, D)
    y = torch.empty(R * G, D, dtype=torch.int64, device=W.device)
    g_opt = torch.empty(R * G, device=W.device)
    curv = torch.empty(R * G, device=W.device)
    for s in range(0, R * G, chunk_groups):
        e = min(R * G, s + chunk_groups)
        ws = None
        if wts is not None:
            flat = torch.arange(s, e, device=W.device)
            ws = wts[flat // G, flat % G]
        y[s:e] = nearest_point(Wg[s:e], K, ws)
        g_opt[s:e], curv[s:e] = _best_gain(Wg[s:e], y[s:e], ws)
    row_norm = W.to(torch.float32).norm(dim=1).clamp_max(60000.0)
    scale = choose_row_scale(g_opt.view(R, G), curv.view(R, G), row_norm, levels)
    return y, g_opt.view(R, G), scale, levels


def dequantize_matrix(q: Quantized) -> torch.Tensor:
    """Float32 matrix (R, G * D) decoded exactly as the C reference decoder does."""
    R, G = q.index.shape
    y = decode_index(q.index.reshape(-1), q.D, q.K)
    gain = q.scale.to(torch.float32)[:, None] * q.levels.to(q.index.device)[q.code]
    return decode_groups(y, gain.reshape(-1)).view(R, G * q.D)
