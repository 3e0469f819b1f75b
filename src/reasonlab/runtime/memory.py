"""glibc malloc tuning: keep the memory freed tensors leave instead of faulting it in again."""

from __future__ import annotations

import os

MALLOC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
TRIM_THRESHOLD = 2**31 - 1


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory freed tensors leave, instead of handing it back to the
    kernel and faulting it in again for the next one: no block comes from a fresh ``mmap`` (the
    main heap serves them all; glibc still maps memory where the heap cannot grow, and for threads'
    arenas past their 64 MB heaps), and the heap is not trimmed below 2 GB of free space. Faulting
    fresh memory in is slow (benchmarks/README.md, "Freed memory faulted in again", has the
    measurements): on CPU every decoding step allocates several (rows x vocabulary) tensors, and a
    training micro-batch's logits, their log-softmax and both gradients are hundreds of MB each.
    So the CLI and the benchmarks call this first. The process keeps its peak memory once reached.
    Does nothing (False) off glibc, or when the user set a MALLOC_* variable of these (theirs wins)."""
    import ctypes

    if any(name in os.environ for name in MALLOC_ENV):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's <malloc.h> parameter numbers
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
