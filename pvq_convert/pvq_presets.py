"""Presets: (D, K, gain bits) for a target bits per weight, with the exact rate of a row.

A row of n weights costs G = n / D fields of W = ceil(log2 N(D, K)) + b bits plus one fp16 scale:
bits per weight = W / D + 16 / n.  For each target the preset takes the largest K whose field fits
W = target * D bits, so no index bit is wasted; b is the best gain/shape split at that rate on
Gaussian rows (docs/codec.md, "Choosing the gain bits"; for 2.75 and 3.75, the per-tensor allocation's
intermediate rates, measured on 256 x 576 Gaussian rows: MSE 0.0412 / 0.0442 / 0.0530 with b = 2 / 3 / 4
at 2.75, 0.0128 / 0.0094 / 0.0107 with b = 2 / 3 / 4 at 3.75; at 4.5 b = 4 would need an index
of 2^31 or more, so it takes b = 5: gap 3.02 dB against 3.78 with b = 6).  All presets use D = 8,
the group size the AVX2 / AVX-512 kernels decode (indices below 2^31); D = 16 codes 0.2-0.3 dB
closer to the Gaussian bound at equal rate but decodes through the scalar reference only.
"""
from __future__ import annotations

from .pvq import pyramid_count
from .pvq_format import Layout, layout

# target bits per weight (before the row scale) -> (D, gain bits)
PRESETS = {
    2.25: (8, 3),      # K = 6,  W = 18
    2.75: (8, 2),      # K = 10, W = 22
    3.25: (8, 3),      # K = 14, W = 26
    3.75: (8, 3),      # K = 22, W = 30
    4.25: (8, 4),      # K = 29, W = 34
    4.5: (8, 5),       # K = 32, W = 36 (b = 4 would need K = 36, an index of 2^31 or more)
}


def largest_k(D: int, index_bits: int) -> int:
    """The largest K with N(D, K) <= 2^index_bits."""
    k = 1
    while pyramid_count(D, k + 1) <= 1 << index_bits:
        k += 1
    return k


def preset(bits: float) -> Layout:
    """The layout for a target rate (one of PRESETS' keys)."""
    if bits not in PRESETS:
        raise ValueError(f"no PVQ preset for {bits} bits per weight; choose one of {sorted(PRESETS)}")
    D, b = PRESETS[bits]
    field = round(bits * D)
    return layout(D, largest_k(D, field - b), b)


def describe(lay: Layout, n: int) -> str:
    return (f"PVQ D={lay.D} K={lay.K} b={lay.gain_bits}: {lay.index_bits}-bit index + {lay.gain_bits}-bit "
            f"gain per {lay.D} weights, fp16 scale per row of {n}: {lay.bits_per_weight(n):.4f} bits/weight")


if __name__ == "__main__":
    for bits in sorted(PRESETS):
        for n in (576, 1536, 4096, 14336):
            print(f"{bits:5.2f}  n={n:6d}  {describe(preset(bits), n)}")
