"""Decode throughput of the PVQ kernels, one thread, at the presets (docs/codec.md).

    python -m bench.bench_codec [--n 4096] [--rows 65536] [--repeats 3]

Builds bench/pvq_bench.c with the kernels (cc -O2), fills a matrix of random valid rows (uniform
indices and gain codes) larger than the caches, and times y = W x row by row:
  dot         float activations, decode fused with the dot product
  dot_q8      activations quantized once to int8 per 128 (pvq_quantize_x_q8, inside the timing),
              integer dot of the decoded int8 points (vpmaddubsw / AVX-512 VNNI vpdpbusd)
  dequantize  each row decoded to float32 (the input of a GEMM for prompt processing)
for the reference (the general recursive decoder), the table-driven scalar kernel, AVX2 and AVX-512.
The reference runs on 1/16 of the rows.
Yardstick: llama.cpp's ~270 tokens/s on SmolLM2-135M with 2 threads here is ~14 G weights/s per core.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
from pathlib import Path

from pvq_convert import pvq_presets

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "runtime" / "src" / "kernels"
SOURCES = [ROOT / "bench" / "pvq_bench.c"] + [KERNELS / f for f in
                                               ("isa.c", "pvq_codec.c", "pvq_ref.c", "pvq_scalar.c", "pvq_repack.c", "pvq_avx2.c",
                                                "pvq_avx512.c")]


def build() -> Path:
    h = hashlib.sha256()
    for p in SOURCES + [KERNELS / "pvq_codec.h", KERNELS / "isa.h"]:
        h.update(p.read_bytes())
    cache = Path(os.environ.get("PVQ_CACHE", Path.home() / ".cache" / "pvq")) / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    exe = cache / f"pvq_bench-{h.hexdigest()[:16]}"
    if not exe.exists():
        subprocess.run(["cc", "-std=c11", "-O2", f"-I{KERNELS}", *map(str, SOURCES), "-o", str(exe), "-lm"],
                       check=True)
    return exe


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096, help="row length")
    ap.add_argument("--rows", type=int, default=65536)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    exe = build()
    print("| preset | layout | MB | kernel | op | G weights/s | GB/s |")
    print("|---|---|---|---|---|---|---|")
    for bits in sorted(pvq_presets.PRESETS):
        lay = pvq_presets.preset(bits)
        for kind in ("ref", "scalar", "avx2", "avx512"):
            for op in ("dot", "dot_q8", "dequantize"):
                if op == "dot_q8" and kind == "scalar":
                    continue
                rows = args.rows // 16 if kind == "ref" else args.rows
                reps = 1 if kind == "ref" else args.repeats
                r = subprocess.run([str(exe), str(lay.D), str(lay.K), str(lay.gain_bits), str(args.n),
                                    str(rows), kind, op, str(reps)], capture_output=True, text=True)
                if r.returncode:
                    print(f"| {bits} | {kind} {op}: {r.stderr.strip()} |")
                    continue
                out = r.stdout
                mb = out.split("bytes=")[1].split("MB")[0]
                gws = out.split(": ")[1].split(" Gweights/s")[0]
                gbs = out.split("(")[1].split(" GB/s")[0]
                print(f"| {bits} | D={lay.D} K={lay.K} b={lay.gain_bits} | {mb} | {kind} | {op} | {gws} | {gbs} |",
                      flush=True)


if __name__ == "__main__":
    main()
