"""glibc's heap settings for the converter's main process (its row workers keep the defaults: with the setting
in every process the quantizing phase took ~20% longer, and the workers are not the largest process).

By default glibc serves an allocation from its heaps once its dynamic mmap threshold has grown past the
allocation's size (up to 32 MiB, after one such block was freed), and keeps up to 8 heaps per core.  Torch's
tensors of a few MiB (a block's weights, one sequence's activations) then come and go on those heaps and
leave them fragmented: memory that is free but still resident.  A fixed threshold gives every tensor of
1 MiB or more its own mapping, returned to the system when it is freed, and two heaps are enough for a
process whose threads are torch's (glibc would open up to 8 per core).  On SmolLM2's memory test the
largest process fell from 1.11-1.17 to 0.90 GB, measured from outside pytest (docs/pipeline.md, "Peak
memory").  Other C libraries:
nothing is changed.
"""
from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8
MMAP_THRESHOLD = 1024 * 1024


def release_freed_tensors() -> None:
    """Sets the fixed mmap threshold and two heaps in this process (before its large allocations)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(M_ARENA_MAX, 2)
