"""Rate-distortion of the PVQ codec against scalar round-to-nearest and the Gaussian bound, and the
goodness of fit of the Beta law for group energy shares (docs/codec.md).

    python -m bench.rd_codec [--rows 2048] [--no-smollm2]

Distortion: MSE per weight divided by the mean squared weight (so the i.i.d. Gaussian bound at R bits
per weight is 2^(-2R)); the gap to the bound in dB is 10 log10(nmse / 2^(-2R)).  Rates are exact,
per-row (PVQ) or per-group (scalar) fp16 scales included.
SmolLM2: every linear weight of SmolLM2-135M-Instruct (q, k, v, o, gate, up, down; 30 layers) after a
random rotation of its input dimension: random signs, block-diagonal Hadamard of order 64, a random
permutation, random signs, block Hadamard 64 again (orthogonal; rows of 576 and 1536 are 9 and 24
blocks).  The weights are the dequantized Q4_1 model that models/smollm2.py builds.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from scipy import stats

from pvq_convert import pvq, pvq_presets
from pvq_convert.pvq_format import layout


def gap_db(nmse: float, rate: float) -> float:
    return 10 * math.log10(nmse / 2 ** (-2 * rate))


def rtn(W: torch.Tensor, bits: int, group: int = 64, clip_search: bool = False) -> torch.Tensor:
    """Scalar round-to-nearest, 2^bits levels (j + 1/2) d, j in [-2^(b-1), 2^(b-1)), fp16 d per group."""
    R, n = W.shape
    g = W.reshape(-1, group)
    half = 2 ** (bits - 1)
    amax = g.abs().amax(1, keepdim=True).clamp_min(1e-30)
    best, best_err = None, None
    for c in (np.linspace(0.5, 1.0, 26) if clip_search else [1.0]):
        d = (c * amax / half).to(torch.float16).to(torch.float32).clamp_min(1e-30)
        q = (torch.floor(g / d).clamp(-half, half - 1) + 0.5) * d
        err = ((q - g) ** 2).sum(1, keepdim=True)
        if best is None:
            best, best_err = q, err
        else:
            better = err < best_err
            best = torch.where(better, q, best)
            best_err = torch.where(better, err, best_err)
    return best.reshape(R, n)


def block_hadamard_rotation(n: int, gen: torch.Generator) -> torch.Tensor:
    H = torch.tensor([[1.0]])
    while H.shape[0] < 64:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    B = torch.block_diag(*[H / 8.0] * (n // 64))
    s1 = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    s2 = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    perm = torch.randperm(n, generator=gen)
    return (torch.diag(s1) @ B)[:, perm] @ torch.diag(s2) @ B


def methods(n: int):
    """(name, rate, quantize function) for rows of n weights."""
    out = []
    for bits in sorted(pvq_presets.PRESETS):
        lay = pvq_presets.preset(bits)
        out.append((f"PVQ({lay.D},{lay.K},{lay.gain_bits}) preset {bits}", lay.bits_per_weight(n),
                    lambda W, l=lay: pvq.dequantize_matrix(pvq.quantize_matrix(W, l.D, l.K, l.gain_bits))))
    for D, K, b in [(16, 12, 4), (16, 26, 5)]:
        lay = layout(D, K, b)
        if n % lay.block_size == 0:
            out.append((f"PVQ({D},{K},{b})", lay.bits_per_weight(n),
                        lambda W, l=lay: pvq.dequantize_matrix(pvq.quantize_matrix(W, l.D, l.K, l.gain_bits))))
    for bits in (2, 3, 4):
        out.append((f"RTN {bits}-bit, fp16 scale / 64", bits + 0.25, lambda W, b=bits: rtn(W, b)))
        out.append((f"RTN {bits}-bit + clip search, fp16 / 64", bits + 0.25,
                    lambda W, b=bits: rtn(W, b, clip_search=True)))
    return out


def table(title, rows):
    print(f"\n{title}\n")
    print("| method | bits/weight | NMSE | gap to 2^(-2R) (dB) |")
    print("|---|---|---|---|")
    for name, rate, nmse in sorted(rows, key=lambda r: (round(r[1]), r[0])):
        print(f"| {name} | {rate:.4f} | {nmse:.5f} | {gap_db(nmse, rate):.2f} |")


def gaussian(rows: int):
    gen = torch.Generator().manual_seed(0)
    for n in (576, 4096):
        W = torch.randn(rows if n == 576 else max(rows // 8, 64), n, generator=gen)
        res = []
        for name, rate, f in methods(n):
            res.append((name, rate, (((f(W) - W) ** 2).mean() / (W ** 2).mean()).item()))
        table(f"I.i.d. Gaussian rows of {n} ({W.shape[0]} rows)", res)


def gain_bits_sweep(rows: int):
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(rows // 4, 576, generator=gen)
    print("\nChoosing the gain bits: D = 8, field of W = target * 8 bits, K the largest that fits "
          "(Gaussian rows of 576; gap to the bound in dB)\n")
    print("| target | b=2 | b=3 | b=4 | b=5 |")
    print("|---|---|---|---|---|")
    for bits in sorted(pvq_presets.PRESETS):
        cells = []
        for b in (2, 3, 4, 5):
            K = pvq_presets.largest_k(8, round(bits * 8) - b)
            lay = layout(8, K, b)
            Wh = pvq.dequantize_matrix(pvq.quantize_matrix(W, 8, K, b))
            nmse = (((Wh - W) ** 2).mean() / (W ** 2).mean()).item()
            cells.append(f"K={K}: {gap_db(nmse, lay.bits_per_weight(576)):.2f}")
        print(f"| {bits} | " + " | ".join(cells) + " |")


def smollm2_weights():
    from safetensors.torch import load_file
    from models.smollm2 import ensure
    sd = load_file(str(ensure().hf_dir / "model.safetensors"))
    names = [k for k in sd if k.endswith(".weight") and any(p in k for p in
             ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))]
    return {k: sd[k].to(torch.float32) for k in sorted(names)}


def smollm2(weights):
    gen = torch.Generator().manual_seed(2)
    rot = {n: block_hadamard_rotation(n, gen) for n in {w.shape[1] for w in weights.values()}}
    rotated = {k: w @ rot[w.shape[1]] for k, w in weights.items()}
    res = {}
    for n_name, rate, f in methods(576):
        sse = energy = 0.0
        for k, w in rotated.items():
            # the rate of each method at this tensor's row length
            sse += ((f(w) - w) ** 2).sum().item()
            energy += (w ** 2).sum().item()
        res[n_name] = (rate, sse / energy)
    n_weights = sum(w.numel() for w in rotated.values())
    rates = {}
    for name, _, _ in methods(576):
        rates[name] = 0.0
    for k, w in rotated.items():
        for name, rate, _ in methods(w.shape[1]):
            rates[name] += rate * w.numel() / n_weights
    table(f"SmolLM2-135M linear weights after a random block-Hadamard rotation ({len(rotated)} tensors, "
          f"{n_weights / 1e6:.1f} M weights; rate averaged over tensors)",
          [(name, rates[name], nmse) for name, (_, nmse) in res.items()])
    return rotated


def beta_fit(weights, rotated, D: int = 8):
    print(f"\nBeta goodness of fit: share = ||w_g||^2 / ||w_row||^2 for groups of {D} against "
          f"Beta({D}/2, (n-{D})/2); Kolmogorov-Smirnov distance over all groups, and the same statistic "
          "for i.i.d. Gaussian rows of the same shape (the floor that sampling alone gives)\n")
    print("| row length n | groups | KS rotated | KS unrotated | KS Gaussian | "
          "quantiles 1/10/50/90/99% of share*n/D: rotated | Beta |")
    print("|---|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(3)
    for n in sorted({w.shape[1] for w in rotated.values()}):
        def shares(ws):
            out = []
            for w in ws:
                g = (w.reshape(w.shape[0], -1, D) ** 2).sum(2)
                out.append((g / g.sum(1, keepdim=True)).reshape(-1))
            return torch.cat(out).double().numpy()
        law = stats.beta(D / 2, (n - D) / 2)
        rot = shares([w for w in rotated.values() if w.shape[1] == n])
        raw = shares([w for w in weights.values() if w.shape[1] == n])
        gauss = shares([torch.randn(len(rot) * D // n, n, generator=gen)])
        ks = [stats.kstest(x, law.cdf).statistic for x in (rot, raw, gauss)]
        qs = [0.01, 0.1, 0.5, 0.9, 0.99]
        obs = " / ".join(f"{v:.3f}" for v in np.quantile(rot, qs) * n / D)
        ref = " / ".join(f"{v:.3f}" for v in law.ppf(qs) * n / D)
        print(f"| {n} | {len(rot)} | {ks[0]:.4f} | {ks[1]:.4f} | {ks[2]:.4f} | {obs} | {ref} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2048, help="Gaussian rows of 576")
    ap.add_argument("--no-smollm2", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()
    gaussian(args.rows)
    gain_bits_sweep(args.rows)
    if not args.no_smollm2:
        weights = smollm2_weights()
        rotated = smollm2(weights)
        beta_fit(weights, rotated)
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
