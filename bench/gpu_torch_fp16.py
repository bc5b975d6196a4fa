"""torch's fp16 matmul at batch 1 on the GEMV shapes of `pvq-cuda bench-gemv`, timed with CUDA events
(median of 7 runs of 100 calls), and the PVQ GEMV's speedup over it from that run's log.

    python3 bench/gpu_torch_fp16.py /tmp/pvq-gpu-check/bench-gemv.log

Exit status 0 when the table was printed (the goals are reported, not enforced: see docs/cuda.md)."""
from __future__ import annotations

import re
import sys


def time_us(fn, iters=100, repeats=7):
    import torch
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    times = []
    for _ in range(repeats):
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / iters)
    return sorted(times)[repeats // 2]


def main() -> int:
    try:
        import torch
    except ImportError:
        print("torch is not installed: no fp16 matmul to compare with")
        return 1
    if not torch.cuda.is_available():
        print(f"torch {torch.__version__} has no CUDA device: no fp16 matmul to compare with")
        return 1
    pvq = {}
    if len(sys.argv) > 1:
        for line in open(sys.argv[1]):
            m = re.match(r"(\d\.\d+)\s+(\d+)x(\d+)\s+([\d.]+)", line)
            if m:
                pvq[(m.group(1), int(m.group(2)), int(m.group(3)))] = float(m.group(4))
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    print(f"{'rows x cols':<13} {'torch fp16 us':>13} {'GB/s':>8} {'PVQ 3.25 speedup':>17} {'PVQ 4.25 speedup':>17}")
    for rows, cols in [(14336, 4096), (4096, 14336), (28672, 8192), (8192, 28672)]:
        w = torch.randn(rows, cols, device="cuda", dtype=torch.float16) * 0.01
        x = torch.randn(1, cols, device="cuda", dtype=torch.float16)
        us = time_us(lambda: torch.matmul(x, w.t()))
        speed = [f"{us / pvq[(b, rows, cols)]:.2f}x" if (b, rows, cols) in pvq else "-" for b in ("3.25", "4.25")]
        print(f"{rows}x{cols:<8} {us:13.1f} {w.numel() * 2 / us / 1e3:8.1f} {speed[0]:>17} {speed[1]:>17}")
        del w
    return 0


if __name__ == "__main__":
    sys.exit(main())
