"""Time the converter's layer-by-layer quantization on one Llama-shaped transformer block.

Random weights, and Hessians H = X^T X built from activations that look like a real model's: a
decaying spectrum (the inputs of a linear layer live near a low-dimensional subspace) and a few
outlier channels a hundred times larger than the rest. Each of the block's seven linear weights is
quantized the way quantize_model does it (the same Method.quantize), on --device; the Hessian
products and the block's forward pass are timed too. The per-block time gives the projection for
a whole model: layers x (time per block), plus the embedding and output layers, which are not
quantized.

    python3 bench/convert_block_time.py --device cuda                # Llama-7B block (4096 / 11008)
    python3 bench/convert_block_time.py --device cuda --shape 70b    # Llama-70B block (8192 / 28672)
    python3 bench/convert_block_time.py --shape tiny                 # a quick check on the CPU
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pvq_convert.pvq_presets import preset  # noqa: E402
from pvq_convert.quantize import Method  # noqa: E402

# hidden, ffn, attention heads, kv heads, layers of the whole model
SHAPES = {"7b": (4096, 11008, 32, 32, 32), "70b": (8192, 28672, 64, 8, 80), "tiny": (256, 512, 4, 4, 2)}


def realistic_activations(n_tokens: int, dim: int, gen: torch.Generator, device: str) -> torch.Tensor:
    """(n_tokens, dim) activations: a power-law spectrum over a random basis, plus 4 outlier channels."""
    rank = min(dim, 1024)
    spectrum = torch.arange(1, rank + 1, dtype=torch.float32).pow(-0.7)
    basis = torch.linalg.qr(torch.randn(dim, rank, generator=gen))[0]
    x = (torch.randn(n_tokens, rank, generator=gen) * spectrum) @ basis.T
    x += 0.02 * torch.randn(n_tokens, dim, generator=gen)
    x[:, torch.randperm(dim, generator=gen)[:4]] *= 100.0
    return x.to(device)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--bits", type=float, default=3.25, help="PVQ preset (default 3.25)")
    ap.add_argument("--method", choices=("pvq", "gptq"), default="pvq")
    ap.add_argument("--tokens", type=int, default=8192, help="calibration tokens behind each Hessian")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("convert_block_time: --device cuda, but torch sees no CUDA GPU", file=sys.stderr)
        return 1
    hidden, ffn, heads, kv_heads, layers = SHAPES[args.shape]
    kv = hidden // heads * kv_heads
    # name: (rows, columns, the input the weight reads)
    linears = {"q_proj": (hidden, hidden, "attn"), "k_proj": (kv, hidden, "attn"), "v_proj": (kv, hidden, "attn"),
               "o_proj": (hidden, hidden, "attn_out"), "gate_proj": (ffn, hidden, "ffn"),
               "up_proj": (ffn, hidden, "ffn"), "down_proj": (hidden, ffn, "ffn_out")}
    gen = torch.Generator().manual_seed(0)
    method = Method(name=args.method, layout=preset(args.bits)) if args.method == "pvq" else Method(name="gptq")
    dev = args.device
    if dev == "cuda":
        print(f"device: {torch.cuda.get_device_name()}", flush=True)
    print(f"{args.shape} block: hidden {hidden}, ffn {ffn}, kv {kv}; {args.method} at {args.bits} bpw; "
          f"{args.tokens} calibration tokens; {dev}", flush=True)

    hessians, t_hessian = {}, 0.0
    for inp, dim in (("attn", hidden), ("attn_out", hidden), ("ffn", hidden), ("ffn_out", ffn)):
        x = realistic_activations(args.tokens, dim, gen, dev)
        synchronize(dev)
        t0 = time.perf_counter()
        x64 = x.to(torch.float64)
        hessians[inp] = x64.T @ x64
        synchronize(dev)
        t_hessian += time.perf_counter() - t0
        del x, x64

    method.quantize(torch.randn(64, hidden, generator=gen).to(dev), hessians["attn"])  # compiles the kernels
    total, weights = 0.0, 0
    for name, (rows, cols, inp) in linears.items():
        W = (torch.randn(rows, cols, generator=gen) * cols ** -0.5).to(dev)
        synchronize(dev)
        t0 = time.perf_counter()
        Wq, _ = method.quantize(W, hessians[inp])
        synchronize(dev)
        dt = time.perf_counter() - t0
        err = float(((Wq.to(W) - W).norm() / W.norm()).item())
        print(f"  {name:10s} {rows:6d} x {cols:6d}  {dt:8.2f} s  relative weight error {err:.3f}", flush=True)
        total += dt
        weights += rows * cols
        del W, Wq
    per_block = total + t_hessian
    print(f"block: {total:.1f} s quantizing + {t_hessian:.2f} s Hessian products = {per_block:.1f} s "
          f"({weights / total / 1e6:.2f} M weights/s)")
    print(f"projected for the whole {args.shape} model ({layers} blocks): {layers * per_block / 60:.1f} min "
          f"(the calibration forward passes, a few seconds per block on a GPU, not included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
