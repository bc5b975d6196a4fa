"""The candidate version 2 enumeration of P(8, K) ("quadrant halves"), in plain Python: the executable statement
of the design that bench/pvq_v2_decode.c decodes with AVX-512 (its header and docs/benchmarks.md, "A version 2
enumeration", say why it is built this way). Not used by the converter or the runtime yet.

    python3 bench/pvq_v2_enum.py 14 23 5 6140801    # points of some indices at K = 14, 23-bit indices
"""
from __future__ import annotations

import sys
from functools import lru_cache
from math import comb


def half_count(k: int) -> int:
    """N(4, k): 8k edge points (one pair empty) and 16 C(k+1, 3) interior ones."""
    return 1 if k == 0 else 8 * k + 16 * comb(k + 1, 3)


@lru_cache(maxsize=None)
def class_bases(K: int, B: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(sizes, bases) of the classes k1 = 0..K; a class is padded to 2^(B-7) codes when all padded classes fit."""
    sizes = tuple(half_count(k) * half_count(K - k) for k in range(K + 1))
    pad = 1 << (B - 7)
    if sum(max(s, pad) for s in sizes) > 1 << B:
        pad = 1
    bases = [0]
    for s in sizes:
        bases.append(bases[-1] + max(s, pad))
    return sizes, tuple(bases)


def pair_point(n: int, t: int, q: int) -> tuple[int, int]:
    """rot^q (t, n - t) with rot(a, b) = (-b, a): quarter q of the 4n points of P(2, n)."""
    a, b = t, n - t
    for _ in range(q):
        a, b = -b, a
    return a, b


def pair_code(a: int, b: int) -> tuple[int, int]:
    """(t, q) of a nonzero pair: the inverse of pair_point."""
    if a >= 0 and b > 0:
        return a, 0
    if a < 0 and b >= 0:
        return b, 1
    if a <= 0 and b < 0:
        return -a, 2
    return -b, 3


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


def half_point(k: int, h: int) -> tuple[int, ...]:
    if k == 0:
        return (0, 0, 0, 0)
    if h < 8 * k:                       # edge: one pair empty
        e, q = divmod(h, 4)
        return (0, 0) + pair_point(k, e, q) if e < k else pair_point(k, e - k, q) + (0, 0)
    u = h - 8 * k
    c1, m, c3 = unrank3(u >> 4)
    return pair_point(m, c1, (u >> 2) & 3) + pair_point(k - m, c3 - m - 1, u & 3)


def half_index(v: tuple[int, ...], k: int) -> int:
    if k == 0:
        return 0
    m = abs(v[0]) + abs(v[1])
    if m == 0 or m == k:
        t, q = pair_code(*(v[2:] if m == 0 else v[:2]))
        return 4 * (t if m == 0 else k + t) + q
    tp, qp = pair_code(*v[:2])
    tq, qq = pair_code(*v[2:])
    s = comb(m + 1 + tq, 3) + comb(m, 2) + tp
    return 8 * k + 16 * s + 4 * qp + qq


def decode(idx: int, K: int, B: int) -> tuple[int, ...] | None:
    """The point of a B-bit shape index, or None for a code no point has (padding, or past the last class)."""
    sizes, bases = class_bases(K, B)
    if not 0 <= idx < bases[-1]:
        return None
    k1 = max(j for j in range(K + 1) if bases[j] <= idx)
    r = idx - bases[k1]
    if r >= sizes[k1]:
        return None
    ha, hb = divmod(r, half_count(K - k1))
    return half_point(k1, ha) + half_point(K - k1, hb)


def encode(y: tuple[int, ...], K: int, B: int) -> int:
    """The shape index of a point of P(8, K)."""
    if len(y) != 8 or sum(map(abs, y)) != K:
        raise ValueError(f"{y} is not a point of P(8, {K})")
    _, bases = class_bases(K, B)
    k1 = sum(abs(c) for c in y[:4])
    return bases[k1] + half_index(y[:4], k1) * half_count(K - k1) + half_index(y[4:], K - k1)


if __name__ == "__main__":
    K, B = int(sys.argv[1]), int(sys.argv[2])
    for arg in sys.argv[3:]:
        print(arg, decode(int(arg), K, B))
