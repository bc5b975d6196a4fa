"""Load on python -m pvq.server: C concurrent streaming clients x R requests each against --parallel P slots
(SmolLM2 F16, greedy). Checks that every request completes with the text its prompt gives when sent alone
(one request at a time, before the load), and that the server's RSS stays flat; prints throughput and
p50/p99 latency. Exits non-zero when a check fails.

    python3 bench/bench_server.py [--clients 16] [--requests 10] [--parallel 4] [--max_tokens 32]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from models.smollm2 import ensure  # noqa: E402
from server_util import events, request, rss_bytes, serve  # noqa: E402

SUBJECTS = ["the sea", "a robot", "bread", "the moon", "a library", "winter", "a small town", "music", "rain",
            "a bicycle", "the forest", "coffee", "a train", "mountains", "a garden", "the city", "friendship",
            "an old clock", "the desert", "a river"]


def stream_once(base: str, prompt: str, max_tokens: int):
    """(text, seconds to the first event, seconds to the end) of one streamed greedy completion."""
    start = time.monotonic()
    first, parts = None, []
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    with events(base, "/v1/completions", body) as (status, stream):
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
        for data in stream:
            first = first or time.monotonic() - start
            if data == "[DONE]":
                break
            parts.append(json.loads(data)["choices"][0]["text"])
        else:
            raise RuntimeError("the stream ended without [DONE]")
    return "".join(parts), first, time.monotonic() - start


def percentile(values, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=10, help="per client")
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--n_threads", type=int, default=1, help="runtime threads per slot")
    ap.add_argument("--max_tokens", type=int, default=32)
    args = ap.parse_args()
    prompts = [f"Write one sentence about {s}:" for s in SUBJECTS]
    jobs = [[prompts[(c * args.requests + r) % len(prompts)] for r in range(args.requests)]
            for c in range(args.clients)]

    with serve("pvq.server", ensure().f16_gguf, "--n_ctx", "512", "--n_threads", str(args.n_threads),
               "--parallel", str(args.parallel), "--max_queue", str(args.clients)) as (base, proc):
        alone = {}
        for p in prompts:
            status, _, body = request(base, "POST", "/v1/completions",
                                      {"prompt": p, "max_tokens": args.max_tokens, "temperature": 0})
            reply = json.loads(body)
            alone[p] = reply["choices"][0]["text"], reply["usage"]["completion_tokens"]
        # one concurrent round first, so that every slot's buffers are touched before RSS is measured
        warm = [threading.Thread(target=stream_once, args=(base, jobs[c][0], args.max_tokens))
                for c in range(args.clients)]
        for t in warm:
            t.start()
        for t in warm:
            t.join()

        rss_start, rss_samples, done = rss_bytes(proc.pid), [], threading.Event()
        results, failures = [], []

        def sample_rss():
            while not done.wait(0.25):
                rss_samples.append(rss_bytes(proc.pid))

        def client(c):
            for p in jobs[c]:
                try:
                    text, first, total = stream_once(base, p, args.max_tokens)
                    results.append((p, text, first, total))
                except Exception as e:  # counted as a failed request
                    failures.append((c, p, repr(e)))

        sampler = threading.Thread(target=sample_rss)
        sampler.start()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - start
        done.set()
        sampler.join()
        rss_end = rss_bytes(proc.pid)

    n = args.clients * args.requests
    wrong = [(p, text, alone[p][0]) for p, text, _, _ in results if text != alone[p][0]]
    tokens = sum(alone[p][1] for p, *_ in results)
    latency = [r[3] for r in results]
    first = [r[2] for r in results]
    print(f"{args.clients} clients x {args.requests} streamed requests, --parallel {args.parallel}, "
          f"{args.n_threads} thread(s) per slot, max_tokens {args.max_tokens}, greedy")
    print(f"completed {len(results)}/{n}, failed {len(failures)}, text differs from the request alone: "
          f"{len(wrong)}")
    if results:
        print(f"wall {wall:.1f} s: {len(results) / wall:.2f} requests/s, {tokens / wall:.1f} generated tokens/s")
        print(f"latency p50 {statistics.median(latency):.2f} s, p99 {percentile(latency, 0.99):.2f} s; "
              f"first event p50 {statistics.median(first):.2f} s, p99 {percentile(first, 0.99):.2f} s")
    peak = max(rss_samples + [rss_end])
    print(f"server RSS: {rss_start / 2**20:.1f} MiB after the warm-up round, peak {peak / 2**20:.1f}, "
          f"end {rss_end / 2**20:.1f} MiB ({(rss_end - rss_start) / 2**20:+.1f})")
    for failure in failures[:3]:
        print("failed:", failure)
    for p, got, want in wrong[:3]:
        print(f"differs: {p!r}: {got!r} != {want!r}")
    flat = rss_end - rss_start < 16 << 20
    if not flat:
        print("RSS grew by 16 MiB or more over the run")
    return 0 if len(results) == n and not wrong and flat else 1


if __name__ == "__main__":
    sys.exit(main())
