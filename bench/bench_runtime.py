"""Runtime speed against llama.cpp (llama-cpp-python), same machine, same run: prefill of 512 tokens and
decode of 128 tokens on SmolLM2-135M F16 and Q8_0 with 2 threads. Medians of --reps repetitions, ours and
the peer's alternating. Writes the table into docs/benchmarks.md (the section between the runtime markers).

    python3 bench/bench_runtime.py [--reps 5] [--no-write] [--threads 2] [--cpu-time]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from models import EVAL_TEXT  # noqa: E402
from models.smollm2 import ensure  # noqa: E402
from runtime_clib import Model, q8_0_gguf  # noqa: E402

BEGIN, END = "<!-- runtime-bench:begin -->", "<!-- runtime-bench:end -->"
N_PREFILL, N_DECODE = 512, 128
THREADS = 2  # --threads
CLOCK = time.perf_counter  # --cpu-time: time.process_time, tokens per CPU-second


class Ours:
    def __init__(self, path, repack=False):
        self.m = Model(path, n_ctx=N_PREFILL + N_DECODE + 8, n_threads=THREADS, logits_all=False,
                       pvq_repack=repack)

    def reset(self):
        self.m.reset()

    def eval(self, tokens):
        self.m.eval(tokens)


class Peer:
    def __init__(self, path):
        from llama_cpp import Llama
        self.p = Llama(str(path), n_ctx=N_PREFILL + N_DECODE + 8, n_batch=N_PREFILL, n_threads=THREADS,
                       n_threads_batch=THREADS, verbose=False)

    def reset(self):
        self.p.reset()

    def eval(self, tokens):
        self.p.eval(tokens)


def write_docs_section(begin: str, end: str, block: str, heading: str) -> None:
    """Replaces docs/benchmarks.md's text between the markers by block (which carries them), or appends it
    under heading."""
    doc = ROOT / "docs" / "benchmarks.md"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if begin in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n## {heading}\n\n" + block + "\n"
    doc.write_text(text)


def one_rep(engine, prompt):
    """(prefill tok/s, decode tok/s) of one repetition."""
    engine.reset()
    t0 = CLOCK()
    engine.eval(prompt)
    pp = N_PREFILL / (CLOCK() - t0)
    engine.reset()
    t0 = CLOCK()
    for i in range(N_DECODE):
        engine.eval([prompt[i % len(prompt)]])
    return pp, N_DECODE / (CLOCK() - t0)


def bench_pair(path, prompt, reps):
    """Medians over reps for ours and the peer, their repetitions interleaved so that both see the same
    load on the machine."""
    engines = {"ours": Ours(path), "peer": Peer(path)}
    runs = {k: [] for k in engines}
    for _ in range(reps):
        for k, e in engines.items():
            runs[k].append(one_rep(e, prompt))
    engines["ours"].m.close()
    return tuple(tuple(float(np.median([r[i] for r in runs[k]])) for i in range(2)) for k in ("ours", "peer"))


def main():
    global THREADS, CLOCK
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--threads", type=int, default=THREADS)
    ap.add_argument("--cpu-time", action="store_true",
                    help="tokens per CPU-second of this process (use with --threads 1): less sensitive to other load")
    args = ap.parse_args()
    THREADS = args.threads
    if args.cpu_time:
        CLOCK = time.process_time
    sm = ensure()
    files = {"F16": sm.f16_gguf, "Q8_0": q8_0_gguf(sm.f16_gguf)}
    m = Model(files["F16"], n_ctx=16, logits_all=False)
    prompt = m.tokenize(EVAL_TEXT.read_text()[:20000])[:N_PREFILL]
    m.close()
    rows = []
    for name, path in files.items():
        ours, peer = bench_pair(path, prompt, args.reps)
        rows.append((name, ours, peer))
        print(f"{name}: prefill {ours[0]:.0f} vs {peer[0]:.0f} tok/s ({ours[0] / peer[0]:.2f}x), "
              f"decode {ours[1]:.0f} vs {peer[1]:.0f} tok/s ({ours[1] / peer[1]:.2f}x)", flush=True)
    table = [BEGIN, "",
             f"`python3 bench/bench_runtime.py --reps {args.reps} --threads {THREADS}"
             f"{' --cpu-time' if args.cpu_time else ''}` on {platform.machine()}, {os.cpu_count()} CPUs, "
             f"{THREADS} threads, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; llama.cpp is llama-cpp-python "
             "measured in the same run, repetitions alternating; medians of the reps"
             f"{', in tokens per CPU-second of the process' if args.cpu_time else ', tokens/s'}. Prefill: one batch of 512 tokens of the eval text. "
             "Decode: 128 single-token evaluations from an empty cache (llama-bench's tg128). "
             f"Load average when written: {os.getloadavg()[0]:.1f} (other jobs on the machine slow both engines, "
             "spinning thread pools most).", "",
             "| SmolLM2-135M | pp512 pvq | pp512 llama.cpp | ratio | tg128 pvq | tg128 llama.cpp | ratio |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, (opp, otg), (ppp, ptg) in rows:
        table.append(f"| {name} | {opp:.0f} | {ppp:.0f} | {opp / ppp:.2f}x | {otg:.0f} | {ptg:.0f} | {otg / ptg:.2f}x |")
    table += ["", END]
    if not args.no_write:
        write_docs_section(BEGIN, END, "\n".join(table), "Runtime: pvqrun against llama.cpp")


if __name__ == "__main__":
    main()
