"""Keep freed memory inside the process when training on CPU (Linux, glibc).

By default glibc hands large freed blocks straight back to the kernel (blocks above the mmap threshold are
unmapped, the heap top is trimmed), so every CPU training step faults the same few hundred MB of activations and
gradients in again. PyTorch's CPU tuning guide swaps in jemalloc or tcmalloc for this; glibc's own `mallopt` does
the part that matters here without a preloaded library. Measured on the 2-core machine, SmolLM2-135M full
fine-tuning step, batch 8 x 100 tokens: 3.2-3.3 s before, 2.6-2.9 s after (docs/benchmarks.md, "Fifth round").
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # the largest value glibc accepts on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 2**31 - 1  # an `int`: never trim the heap top in practice


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds; True when they were set. A no-op (False) off Linux/glibc, and when the
    user chose their own through glibc's `MALLOC_*_` environment variables."""
    if not sys.platform.startswith("linux") or any(name.startswith("MALLOC_") for name in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
