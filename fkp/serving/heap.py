"""The C heap of a serving process: freed buffers are kept for the next photo, not given back.

glibc's malloc adapts two thresholds as a process runs: blocks above the *mmap threshold* are
mapped on their own and unmapped when freed, and free memory at the heap's top beyond the *trim
threshold* is handed back to the kernel. One photo allocates and frees some tens of MB (YuNet's
layer buffers, the decoded pixels, TensorFlow's tensors), and with the adaptive thresholds
``fkp serve`` gave most of it back after each photo and faulted it in again on the next: a
640x480 photo cost ~4,400 page faults and 56 ms of CPU (10 ms of it in the kernel), where its
steps run one after the other on a warm heap take 39 ms. Fixed thresholds stop that churn.
Blocks over :data:`MMAP_THRESHOLD` (an 8000x6000 decode) are still mapped and unmapped on their
own, so a huge photo's memory is returned as before.

All threads share one arena: with glibc's arena per thread, after a run of concurrent requests
a 640x480 photo's detection took 37-41 ms instead of 31 (no page faults; memory spread over the
worker threads' arenas), and stayed at 31 ms with one.

These are glibc's own tunables (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_ARENA_MAX`` in the environment); ``mallopt`` sets the same values from inside, because
``fkp serve`` is started by users and services that would each have to export them first.
"""

from __future__ import annotations

import ctypes
import ctypes.util

#: Blocks up to this size come from the heap (glibc's adaptive threshold starts at 128 KiB).
MMAP_THRESHOLD = 16 << 20

#: Free memory at the heap's top is handed back only beyond this (it covers one photo's buffers).
TRIM_THRESHOLD = 64 << 20

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def keep_freed_memory() -> bool:
    """Fix glibc malloc's thresholds for this whole process; False where malloc is not glibc's."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mapped = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    trimmed = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    shared = mallopt(_M_ARENA_MAX, 1)
    return bool(mapped and trimmed and shared)
