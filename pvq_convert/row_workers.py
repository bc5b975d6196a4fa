"""Worker processes that quantize parts of a weight matrix at the same time, on the CPU.

GPTQ and the quantizers treat the rows of a matrix independently (row scales, codes and the error
feedback are per row; only the Hessian is shared), so a matrix can be cut into row blocks that are
quantized side by side and put back together, bit-identical to the whole.  The quantizers issue
thousands of small torch ops each; torch's own threads slow them down (docs/pipeline.md) and Python
threads contend for the interpreter lock (1.3x on one SmolLM2 gate_proj, 2 cores).  Processes gave
1.3-1.5x per large matrix and 1.25x per block on the 2-vCPU machine (docs/pipeline.md).
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import torch


# Most rows a worker takes at once: GPTQ holds several float copies of its rows, which for a vocabulary matrix
# (151 936 x 1536 in Qwen2.5-1.5B) cut only in n halves is ~5 GB per worker (~64 bytes per weight), 4096 rows
# of 1536 about 0.3 GB.
MAX_ROWS = 4096


class RowWorkers:
    """A pool of `n` single-threaded worker processes (started once, about 4 s: each imports torch), each given
    row blocks of at most `max_rows` rows."""

    def __init__(self, n: int, max_rows: int = MAX_ROWS):
        self.n, self.max_rows = n, max_rows
        self.pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_start_worker, initargs=(os.getpid(),))

    def map_rows(self, fn, Ws: list[torch.Tensor], shared, each: list) -> list[Iterator]:
        """For each matrix m, an iterator over fn(rows, shared, each[m]) for each row block of Ws[m] in order: n
        blocks, or more of max_rows rows, all submitted at once, so that a worker done with one block goes on to
        the next.  Each result is let go once given, so a caller that takes them in turn holds one at a time."""
        futures = [[self.pool.submit(fn, rows, shared, arg) for rows in W.split(min(-(-len(W) // self.n), self.max_rows))]
                   for W, arg in zip(Ws, each)]

        def results(parts: list) -> Iterator:
            parts.reverse()
            while parts:
                yield parts.pop().result()
        return [results(parts) for parts in futures]

    def __enter__(self) -> "RowWorkers":
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(cancel_futures=True)


def _start_worker(parent: int) -> None:
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the converter's to handle
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A killed converter must not leave its workers behind."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)
