"""The PVQ codec: pyramid counts, the index enumeration, the greedy encoder and the decoder.

A group of D weights is stored as a gain and a shape: w ~ g * y / ||y||_2 with y on the pyramid
P(D, K) = { y in Z^D : sum |y_i| = K }.  The shape is a B-bit index, B the bit length of N(D, K) - 1.

Enumeration (version 2, docs/format.md "Enumeration of the pyramid"), by dimension:

    d = 1   index 0 is (+k), 1 is (-k)
    d = 2   index 4t + q is rot^q (t, k - t), rot(a, b) = (-b, a), t < k: four quarter-arcs
    d = 4   "edges" first (one pair empty, index < 8k), then 16 quarter pairs per 3-subset
            c1 < c2 < c3 of [0, k] in colex order: pairs (t_P, m, t_Q) = (c1, c2, c3 - c2 - 1)
    other   halves d1 = d // 2, d2 = d - d1, classes by k1 (pulses of the first half) ascending,
            index = base(k1) + index(first) * N(d2, k - k1) + index(second); at the top level (d = D)
            each class starts at a multiple of 2^a (a = B - 7 or B - 8 when that fits the B-bit field,
            else dense), so that a decoder finds k1 in a 128- or 256-entry table; the codes left between
            classes are not points

Integer arithmetic is exact: N(D, K) in Python ints, the torch paths in int64 (the format caps an
index at 56 bits, see pvq_format.MAX_FIELD_BITS).
"""
from __future__ import annotations

from functools import lru_cache
from math import comb

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
    """The halves split used by the enumeration for d = 3 and d >= 5: (d // 2, d - d // 2)."""
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


def has_classes(d: int) -> bool:
    """Whether P(d, k) is enumerated by the halves' classes (d = 3 and d >= 5)."""
    return d == 3 or d >= 5


def _round_up(v: int, bits: int) -> int:
    return -(-v >> bits) << bits


@lru_cache(maxsize=None)
def class_bases(D: int, K: int) -> tuple[int, ...]:
    """The first code of each top-level class k1 = 0..K of P(D, K), and the end of the used codes (K + 2
    values): classes aligned to 2^(B - 7), else 2^(B - 8), when all of them fit the B-bit index, else dense."""
    d1, d2 = split_dims(D)
    sizes = [pyramid_count(d1, j) * pyramid_count(d2, K - j) for j in range(K + 1)]
    B = (pyramid_count(D, K) - 1).bit_length()
    align = next((a for a in (B - 7, B - 8) if a > 0 and sum(_round_up(x, a) for x in sizes) <= 1 << B), 0)
    bases = [0]
    for x in sizes:
        bases.append(bases[-1] + _round_up(x, align))
    return tuple(bases)


# ---------------------------------------------------------------- exact scalar reference (Python ints)

def pair_point(n: int, t: int, q: int) -> list[int]:
    """rot^q (t, n - t) with rot(a, b) = (-b, a): point 4t + q of P(2, n)."""
    a, b = t, n - t
    for _ in range(q):
        a, b = -b, a
    return [a, b]


def pair_index(a: int, b: int) -> int:
    """4t + q of a pair: the inverse of pair_point (0 for (0, 0))."""
    if a >= 0 and b > 0:
        return 4 * a
    if a < 0 and b >= 0:
        return 4 * b + 1
    if a <= 0 and b < 0:
        return -4 * a + 2
    if a > 0:
        return -4 * b + 3
    return 0


def unrank3(s: int) -> tuple[int, int, int]:
    """The 3-subset c1 < c2 < c3 of colex rank s = C(c3, 3) + C(c2, 2) + c1."""
    c3 = 2
    while comb(c3 + 1, 3) <= s:
        c3 += 1
    s -= comb(c3, 3)
    c2 = 1
    while comb(c2 + 1, 2) <= s:
        c2 += 1
    return s - comb(c2, 2), c2, c3


def index_of(y: list[int]) -> int:
    """Index of pyramid point y (a list of ints) in the enumeration."""
    return _index_of(list(y), sum(abs(v) for v in y), True)


def _index_of(y: list[int], k: int, top: bool) -> int:
    d = len(y)
    if d == 1:
        return 0 if y[0] >= 0 else 1
    if d == 2:
        return pair_index(*y)
    if d == 4:
        m = abs(y[0]) + abs(y[1])
        if m == 0:
            return pair_index(*y[2:])
        if m == k:
            return 4 * k + pair_index(*y[:2])
        p, q = pair_index(*y[:2]), pair_index(*y[2:])
        s = comb(m + 1 + (q >> 2), 3) + comb(m, 2) + (p >> 2)
        return 8 * k + 16 * s + 4 * (p & 3) + (q & 3)
    d1, d2 = split_dims(d)
    k1 = sum(abs(v) for v in y[:d1])
    base = (class_bases(d, k)[k1] if top else
            sum(pyramid_count(d1, j) * pyramid_count(d2, k - j) for j in range(k1)))
    return base + _index_of(y[:d1], k1, False) * pyramid_count(d2, k - k1) + _index_of(y[d1:], k - k1, False)


def point_of(index: int, d: int, k: int) -> list[int]:
    """Pyramid point of P(d, k) with the given index (inverse of index_of); ValueError for a code that
    is no point (past N(d, k), or between two aligned classes)."""
    return _point_of(index, d, k, True)


def _point_of(index: int, d: int, k: int, top: bool) -> list[int]:
    if not has_classes(d) or not top:
        if not 0 <= index < pyramid_count(d, k):
            raise ValueError(f"index {index} out of range for N({d},{k})={pyramid_count(d, k)}")
    if d == 1:
        return [k if index == 0 else -k]
    if d == 2:
        return pair_point(k, index >> 2, index & 3)
    if d == 4:
        if k == 0:
            return [0, 0, 0, 0]
        if index < 8 * k:
            e, q = divmod(index, 4)
            return [0, 0] + pair_point(k, e, q) if e < k else pair_point(k, e - k, q) + [0, 0]
        u = index - 8 * k
        c1, c2, c3 = unrank3(u >> 4)
        return pair_point(c2, c1, (u >> 2) & 3) + pair_point(k - c2, c3 - c2 - 1, u & 3)
    d1, d2 = split_dims(d)
    if top:
        bases = class_bases(d, k)
        if not 0 <= index < bases[-1]:
            raise ValueError(f"index {index} out of range for the {bases[-1]} codes of P({d},{k})")
        k1 = max(j for j in range(k + 1) if bases[j] <= index)
        index -= bases[k1]
        if index >= pyramid_count(d1, k1) * pyramid_count(d2, k - k1):
            raise ValueError(f"index {index + bases[k1]} lies between two classes of P({d},{k}): no point")
    else:
        k1 = 0
        while index >= pyramid_count(d1, k1) * pyramid_count(d2, k - k1):
            index -= pyramid_count(d1, k1) * pyramid_count(d2, k - k1)
            k1 += 1
    n2 = pyramid_count(d2, k - k1)
    return _point_of(index // n2, d1, k1, False) + _point_of(index % n2, d2, k - k1, False)


# ---------------------------------------------------------------- vectorised enumeration (torch int64)

class Tables:
    """Count tables for one (D, K) as int64 tensors on a device, shared by index encode/decode.

    count[d][k]   = N(d, k)                                  for every d in the split tree, k <= K
    cum[d][k][j]  = sum_{i < j} N(d1, i) * N(d2, k - i)      for j <= k + 1, dimensions with classes;
                    2^62 for j > k + 1 (a search for "largest j with cum <= r" stops at k)
    top[j]        = class_bases(D, K), the top level's aligned classes (K + 2 entries), and
    top_size[j]   = the points of class j
    binom3[c], binom2[c] = C(c, 3), C(c, 2) for c <= K + 2 (the halves' colex ranks)
    """

    def __init__(self, D: int, K: int, device: torch.device | str = "cpu"):
        if pyramid_count(D, K) >= 1 << 62:
            raise ValueError(f"N({D},{K}) does not fit the 62-bit integer tables")
        self.D, self.K, self.device = D, K, torch.device(device)
        self.count, self.cum = {}, {}
        big = 1 << 62

        def tensor(v):
            return torch.tensor(v, dtype=torch.int64, device=self.device)

        for d in tree_dims(D):
            self.count[d] = tensor([pyramid_count(d, k) for k in range(K + 1)])
            if has_classes(d):
                d1, d2 = split_dims(d)
                rows = []
                for k in range(K + 1):
                    acc, row = 0, []
                    for j in range(K + 2):
                        row.append(acc if j <= k + 1 else big)
                        if j <= k:
                            acc += pyramid_count(d1, j) * pyramid_count(d2, k - j)
                    rows.append(row)
                self.cum[d] = tensor(rows)
        if has_classes(D):
            d1, d2 = split_dims(D)
            self.top = tensor(list(class_bases(D, K)))
            self.top_size = tensor([pyramid_count(d1, j) * pyramid_count(d2, K - j) for j in range(K + 1)])
        self.binom3 = tensor([comb(c, 3) for c in range(K + 3)])
        self.binom2 = tensor([comb(c, 2) for c in range(K + 3)])


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
    return _index_rec(y, k, t, True)


def _pair_index(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """4t + q of pairs (a, b), as pair_index."""
    return torch.where((a >= 0) & (b > 0), 4 * a,
           torch.where((a < 0) & (b >= 0), 4 * b + 1,
           torch.where((a <= 0) & (b < 0), 2 - 4 * a,
           torch.where(a > 0, 3 - 4 * b, torch.zeros_like(a)))))


def _index_rec(y: torch.Tensor, k: torch.Tensor, t: Tables, top: bool) -> torch.Tensor:
    d = y.shape[1]
    if d == 1:
        return (y[:, 0] < 0).to(torch.int64)
    if d == 2:
        return _pair_index(y[:, 0], y[:, 1])
    if d == 4:
        m = y[:, :2].abs().sum(1)
        p, q = _pair_index(y[:, 0], y[:, 1]), _pair_index(y[:, 2], y[:, 3])
        c3 = m + 1 + (q >> 2)                              # <= k + 1 on every branch
        inner = 8 * k + 16 * (t.binom3[c3] + t.binom2[m] + (p >> 2)) + 4 * (p & 3) + (q & 3)
        return torch.where(m == 0, q, torch.where(m == k, 4 * k + p, inner))
    d1, d2 = split_dims(d)
    k1 = y[:, :d1].abs().sum(1)
    k2 = k - k1
    base = t.top[k1] if top else t.cum[d][k, k1]
    return base + _index_rec(y[:, :d1], k1, t, False) * t.count[d2][k2] + _index_rec(y[:, d1:], k2, t, False)


def valid_index(index: torch.Tensor, D: int, K: int) -> torch.Tensor:
    """Whether each B-bit code is the index of a point of P(D, K) (bool, shape of index)."""
    index = index.to(torch.int64)
    if not has_classes(D):
        return (index >= 0) & (index < pyramid_count(D, K))
    t = tables(D, K, str(index.device))
    inside = (index >= 0) & (index < t.top[-1])
    k1 = (t.top[None, :K + 1] <= index.clamp(min=0)[:, None]).sum(1) - 1
    return inside & (index - t.top[k1] < t.top_size[k1])


def rank_to_index(rank: torch.Tensor, D: int, K: int) -> torch.Tensor:
    """The index of the rank-th point of P(D, K) in index order (0 <= rank < N(D, K)): uniform ranks give
    uniform points, and arange(N) every point once."""
    rank = rank.to(torch.int64)
    if not has_classes(D):
        return rank
    t = tables(D, K, str(rank.device))
    dense = t.cum[D][K, :K + 1]
    k1 = (dense[None, :] <= rank[:, None]).sum(1) - 1
    return rank - dense[k1] + t.top[k1]


def decode_index(index: torch.Tensor, D: int, K: int) -> torch.Tensor:
    """Pyramid points (int64 (G, D)) for indices (int64 (G,)); every index must be a point's
    (valid_index), else ValueError."""
    t = tables(D, K, str(index.device))
    index = index.to(torch.int64)
    if not bool(valid_index(index, D, K).all()):
        raise ValueError(f"decode_index: an index is not a point of P({D},{K})")
    k = torch.full_like(index, K)
    out = torch.empty(index.shape[0], D, dtype=torch.int64, device=index.device)
    _decode_rec(index, k, D, 0, out, t, True)
    return out


def _pair_point(n: torch.Tensor, t: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """rot^q (t, n - t), as pair_point, shape (G, 2)."""
    odd, z = (q & 1) == 1, n - t
    a, b = torch.where(odd, z, t), torch.where(odd, t, z)
    a = torch.where((q == 1) | (q == 2), -a, a)
    b = torch.where(q >= 2, -b, b)
    return torch.stack([a, b], 1)


def _decode_rec(r: torch.Tensor, k: torch.Tensor, d: int, col: int, out: torch.Tensor, t: Tables, top: bool):
    if d == 1:
        out[:, col] = torch.where(r == 0, k, -k)
        return
    if d == 2:
        out[:, col:col + 2] = _pair_point(k, r >> 2, r & 3)
        return
    if d == 4:
        edge = (r < 8 * k) | (k == 0)
        e, side = r >> 2, (r >> 2) >= k
        u = (r - 8 * k).clamp(min=0)
        s = u >> 4
        c3 = torch.searchsorted(t.binom3, s, right=True) - 1
        s2 = s - t.binom3[c3]
        c2 = torch.searchsorted(t.binom2, s2, right=True) - 1
        c1 = s2 - t.binom2[c2]
        zero = torch.zeros_like(k)
        n_p = torch.where(edge, torch.where(side, k, zero), c2)
        t_p = torch.where(edge, torch.where(side, e - k, zero), c1)
        t_q = torch.where(edge, torch.where(side, zero, e), c3 - c2 - 1)
        q_p = torch.where(edge, r & 3, (u >> 2) & 3)
        out[:, col:col + 2] = _pair_point(n_p, t_p, q_p)
        out[:, col + 2:col + 4] = _pair_point(k - n_p, t_q, r & 3)
        return
    d1, d2 = split_dims(d)
    cum = t.top[None, :].expand(r.shape[0], -1) if top else t.cum[d][k]     # (G, K + 2)
    k1 = (cum[:, :t.K + 1] <= r[:, None]).sum(1) - 1    # entry K + 1 is past every code of its class
    k2 = k - k1
    r = r - cum.gather(1, k1[:, None])[:, 0]
    n2 = t.count[d2][k2]
    _decode_rec(r // n2, k1, d1, col, out, t, False)
    _decode_rec(r % n2, k2, d2, col + d1, out, t, False)


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
