"""Host memory: let the C allocator keep freed memory for the next training step.

A training step allocates the same large arrays every time (im2col's columns alone are 25x the
images), and xpcnn's layers let go of them as soon as backward has used them.  glibc's malloc
then often hands that memory back to the operating system (it trims the top of the heap once
more than twice the largest recent block is free, and unmaps blocks it got from mmap), so the
next step takes it back page by page.  On the development VM that doubled the time of the
default preset's steps (3,700 against 7,500 images/s, 235,000 against 14,000 page faults:
docs/performance.md).

:func:`keep_freed_memory` asks glibc (``mallopt``) to keep up to ``trim_threshold`` bytes of
freed memory and to serve blocks below ``mmap_threshold`` from the heap, where they are reused.
It is a process-wide setting, so the library never calls it on import: the command-line entry
points (``train.py``, ``bench.py``) call it first thing, and scripts may do the same.  The price
is resident memory that stays at its peak instead of shrinking between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
_ENVIRONMENT = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def keep_freed_memory(trim_threshold: int = 1 << 30, mmap_threshold: int = 32 << 20) -> str:
    """Tune glibc's malloc as above; returns what was done, in words (for logs and reports).
    A no-op where the C library is not glibc, and where the user set either ``MALLOC_*_``
    environment variable (theirs wins)."""
    for name, value in (("trim_threshold", trim_threshold), ("mmap_threshold", mmap_threshold)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2 ** 31:
            raise ValueError(f"keep_freed_memory: {name} must be an integer in [1, 2**31) bytes (a C int), "
                             f"got {value!r}")
    chosen = [name for name in _ENVIRONMENT if name in os.environ]
    if chosen:
        return f"left to the environment ({', '.join(chosen)})"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "not glibc: allocator left as it is"
    if mallopt(_M_MMAP_THRESHOLD, mmap_threshold) != 1 or mallopt(_M_TRIM_THRESHOLD, trim_threshold) != 1:
        return "mallopt refused a threshold: allocator (partly) left as it is"
    return f"glibc keeps up to {trim_threshold >> 20} MiB freed; blocks < {mmap_threshold >> 20} MiB from the heap"
