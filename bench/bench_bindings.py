"""Python overhead of pvq.Llama per generated token, against the runtime's own decode time (SmolLM2-135M F16,
2 threads, greedy, 128 tokens). Two measures:

1. In process: a greedy create_completion(max_tokens=128) with the two runtime calls of the token loop
   (pvq_eval, pvq_sampler_sample) timed; overhead = (wall time - time inside them) per token, which also
   charges the timing wrappers to Python.
2. End to end: decode time per token of pvq.Llama (completion time minus the prompt's eval) against pvqrun's
   own figure for the same prompt and length (interleaved runs, medians over --reps).

    python3 bench/bench_bindings.py [--reps 5]
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bindings_util import import_pvq  # noqa: E402
from models.smollm2 import ensure  # noqa: E402

PROMPT, N_TOKENS, THREADS, N_CTX = "Once upon a time", 128, 2, 512


class TimedLib:
    """libpvq with pvq_eval and pvq_sampler_sample timed (everything else passes through)."""

    def __init__(self, lib):
        self._lib, self.seconds = lib, 0.0
        for name in ("pvq_eval", "pvq_sampler_sample"):
            setattr(self, name, self._timed(getattr(lib, name)))

    def _timed(self, fn):
        def call(*args):
            t = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.seconds += time.perf_counter() - t
        return call

    def __getattr__(self, name):
        value = getattr(self._lib, name)
        setattr(self, name, value)
        return value


def in_process(pvq, path):
    import pvq.llama as pl
    llm = pvq.Llama(str(path), n_ctx=N_CTX, n_threads=THREADS, verbose=False)
    real, timed = pl.lib, TimedLib(pl.lib)
    try:
        pl.lib = timed
        llm.reset()
        t = time.perf_counter()
        r = llm(PROMPT, temperature=0, max_tokens=N_TOKENS)
        wall = time.perf_counter() - t
    finally:
        pl.lib = real
        llm.close()
    assert r["usage"]["completion_tokens"] == N_TOKENS, r["usage"]
    return wall, timed.seconds


def llama_decode(llm):
    """Seconds per generated token of a greedy completion, the prompt's evaluation subtracted."""
    tokens = llm.tokenize(PROMPT.encode(), special=True)
    llm.reset()
    t = time.perf_counter()
    llm.eval(tokens)
    prompt_s = time.perf_counter() - t
    llm.reset()
    t = time.perf_counter()
    r = llm(PROMPT, temperature=0, max_tokens=N_TOKENS)
    total = time.perf_counter() - t
    assert r["usage"]["completion_tokens"] == N_TOKENS, r["usage"]
    # the loop evaluates N_TOKENS - 1 generated tokens (the last one is sampled, not evaluated)
    return (total - prompt_s) / (N_TOKENS - 1)


def pvqrun_decode(path):
    out = subprocess.run([str(ROOT / "runtime" / "build" / "pvqrun"), "-m", str(path), "-p", PROMPT, "-n",
                          str(N_TOKENS), "--temp", "0", "-t", str(THREADS), "-c", str(N_CTX), "-v"],
                         capture_output=True, text=True, check=True)
    m = re.search(r"generated: (\d+) tokens in ([\d.]+) s", out.stderr)
    assert m and int(m.group(1)) == N_TOKENS, out.stderr
    return float(m.group(2)) / N_TOKENS


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    pvq = import_pvq()
    path = ensure().f16_gguf

    splits = [in_process(pvq, path) for _ in range(args.reps)]
    wall, in_c = sorted(splits, key=lambda s: s[0] - s[1])[len(splits) // 2]  # the median overhead
    py_us = (wall - in_c) / N_TOKENS * 1e6
    c_ms = in_c / N_TOKENS * 1e3
    print(f"in process: {N_TOKENS} tokens in {wall:.3f} s, {in_c:.3f} s inside pvq_eval + pvq_sampler_sample; "
          f"Python {py_us:.0f} us/token = {py_us / 1e3 / c_ms:.2%} of the runtime's {c_ms:.2f} ms/token "
          f"(median of {args.reps})")

    llm = pvq.Llama(str(path), n_ctx=N_CTX, n_threads=THREADS, verbose=False)
    ours, theirs = [], []
    for _ in range(args.reps):  # interleaved, so that machine load hits both alike
        ours.append(llama_decode(llm))
        theirs.append(pvqrun_decode(path))
    llm.close()
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"end to end: pvq.Llama {a * 1e3:.2f} ms/token, pvqrun {b * 1e3:.2f} ms/token: "
          f"{(a - b) / b:+.2%} (medians of {args.reps})")


if __name__ == "__main__":
    main()
