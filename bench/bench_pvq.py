"""PVQ in the runtime against llama.cpp, same machine, same run, 2 threads.

1. SmolLM2-135M: prefill of 512 tokens (pp512) and decode of 128 tokens (tg128) in tokens/s, ours on PVQ 3.25
   and 4.25 (`python -m pvq_convert --bits B --no-hessian`, models/smollm2.py pvq_gguf), native (decoding the
   PVQ fields) and repacked at load (`pvqrun --pvq-repack`: int8 points + float group scales), against llama.cpp
   (llama-cpp-python) on Q3_K_M, Q4_K_M and Q4_0 made from the same F16 reference with
   llama_cpp.llama_model_quantize. Each rep times every engine once, in turn; the table shows medians.
2. The memory-bound matrix-vector product (bench/pvq_gemv.c): one PVQ 3.25 matrix of 4096 x 14336 and one of
   14336 x 4096 through the runtime's decode path (native and repacked), effective GB/s of PVQ weight bytes,
   against the read bandwidth measured in the same run.
Writes the tables into docs/benchmarks.md between the pvq-bench markers.

    python3 bench/bench_pvq.py [--reps 5] [--bits 3.25 4.25] [--no-write]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from models import EVAL_TEXT  # noqa: E402
from models.smollm2 import HERE, ensure, pvq_gguf  # noqa: E402
from bench.bench_runtime import N_DECODE, N_PREFILL, THREADS, Ours, Peer, one_rep, write_docs_section  # noqa: E402
from runtime_clib import RUNTIME, Model, build_dir  # noqa: E402

BEGIN, END = "<!-- pvq-bench:begin -->", "<!-- pvq-bench:end -->"
PEER_TYPES = ("Q3_K_M", "Q4_K_M", "Q4_0")


def peer_gguf(f16: Path, ftype: str) -> Path:
    """The F16 reference quantized by llama.cpp, made once."""
    import llama_cpp
    out = HERE / f"{ftype.lower()}.gguf"
    if not out.exists():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
        params.nthread = THREADS
        tmp = out.with_suffix(".tmp")
        if llama_cpp.llama_model_quantize(str(f16).encode(), str(tmp).encode(), params) != 0:
            raise SystemExit(f"llama_model_quantize to {ftype} failed")
        tmp.replace(out)
    return out


def repacked_mib(path: Path) -> float:
    """RAM the repacked rows take: 192 bytes per 128 weights of each PVQ row."""
    import gguf

    from pvq_convert.pvq_format import is_pvq_type
    r = gguf.GGUFReader(path)
    return sum(int(t.shape[1]) * -(-int(t.shape[0]) // 128) * 192 for t in r.tensors
               if is_pvq_type(int(t.tensor_type))) / 2**20


def gemv(type_id: int, rows: int, n: int, threads: int, reps: int, repacked: bool) -> dict:
    exe = build_dir() / "pvq_gemv"
    src = ROOT / "bench" / "pvq_gemv.c"
    lib = build_dir() / "libpvq_internal.so"  # the kernels' symbols
    if not exe.exists() or exe.stat().st_mtime < max(src.stat().st_mtime, lib.stat().st_mtime):
        subprocess.run(["cc", "-std=c11", "-O2", "-D_GNU_SOURCE", "-march=native", f"-I{RUNTIME / 'src'}", str(src),
                        "-o", str(exe), f"-L{exe.parent}", "-lpvq_internal", "-Wl,-rpath,$ORIGIN", "-lm", "-pthread"], check=True)
    r = subprocess.run([str(exe), hex(type_id), str(rows), str(n), str(threads), str(reps)] + ["repacked"] * repacked,
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--bits", type=float, nargs="+", default=[3.25, 4.25], help="PVQ presets to run")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    sm = ensure()
    pvq = {f"PVQ {b}": pvq_gguf(b, ("--no-hessian",)) for b in args.bits}  # speed: the values do not matter
    files = pvq | {f"{n} repacked": p for n, p in pvq.items()} | {t: peer_gguf(sm.f16_gguf, t) for t in PEER_TYPES}
    tok = Model(sm.f16_gguf, n_ctx=16, logits_all=False)
    prompt = tok.tokenize(EVAL_TEXT.read_text()[:20000])[:N_PREFILL]
    tok.close()
    engines = {name: Ours(path, name.endswith("repacked")) if name.startswith("PVQ") else Peer(path)
               for name, path in files.items()}
    runs = {name: [] for name in files}
    for rep in range(args.reps):
        for name, e in engines.items():
            runs[name].append(one_rep(e, prompt))
        print(f"rep {rep + 1}: " + ", ".join(f"{n} {r[-1][0]:.0f}/{r[-1][1]:.0f}" for n, r in runs.items()), flush=True)
    med = {n: (statistics.median(p for p, _ in r), statistics.median(t for _, t in r)) for n, r in runs.items()}
    sizes = {n: f"{Path(p).stat().st_size / 2**20:.0f}" for n, p in files.items()}
    for n, p in pvq.items():
        sizes[f"{n} repacked"] += f" + {repacked_mib(p):.0f} RAM"

    from pvq_convert.pvq_presets import preset
    tid = preset(3.25).type_id
    mv = [gemv(tid, rows, n, t, 7, rp) for rows, n in ((4096, 14336), (14336, 4096)) for t in (1, THREADS)
          for rp in (False, True)]

    when = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())
    lines = [BEGIN, "",
             f"`python3 bench/bench_pvq.py --reps {args.reps} --bits {' '.join(map(str, args.bits))}` on {platform.machine()}, {os.cpu_count()} CPUs, "
             f"{THREADS} threads, {when}; medians of the reps, every engine timed once per rep in turn. "
             f"Load average when written: {os.getloadavg()[0]:.1f} (the machine is shared: other jobs slow "
             "every engine, and these figures are noisy).", "",
             "| SmolLM2-135M | engine | file MiB | pp512 tok/s | tg128 tok/s |", "|---|---|---:|---:|---:|"]
    for n in files:
        lines.append(f"| {n} | {'pvq' if n.startswith('PVQ') else 'llama.cpp'} | {sizes[n]} | "
                     f"{med[n][0]:.0f} | {med[n][1]:.1f} |")
    ref = med["Q3_K_M"]
    lines += ["", "Against llama.cpp on Q3_K_M: " + ", ".join(
        f"{n} prefill {med[n][0] / ref[0]:.2f}x, decode {med[n][1] / ref[1]:.2f}x" for n in files if n.startswith("PVQ")),
        "", "Matrix-vector product of one PVQ 3.25 matrix (random valid fields, decode path: int8 activations, "
        "median of 7), against the read bandwidth measured in the same run (threads summing a 1 GiB buffer); "
        "weight GB/s counts the PVQ bytes also for the repacked rows (which read 1.5 bytes per weight):", "",
        "| rows x n | threads | kernel | weight MB | bits/weight | ms | G weights/s | weight GB/s | read GB/s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in mv:
        lines.append(f"| {r['rows']} x {r['n']} | {r['threads']} | {r['kernel']} | {r['weight_bytes'] / 1e6:.1f} | "
                     f"{r['bits_per_weight']:.3f} | {r['gemv_s'] * 1e3:.1f} | {r['weights_per_s'] / 1e9:.2f} | "
                     f"{r['gemv_gbps']:.2f} | {r['read_gbps']:.1f} |")
    lines += ["", END]
    block = "\n".join(lines)
    print(block)
    if not args.no_write:
        write_docs_section(BEGIN, END, block, "PVQ in the runtime against llama.cpp")


if __name__ == "__main__":
    main()
