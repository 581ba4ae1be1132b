"""Keep freed memory inside the process when training on CPU (Linux, glibc).

By default glibc hands large freed blocks straight back to the kernel (blocks above the mmap threshold are
unmapped, the heap top is trimmed), so every CPU training step faults the same few hundred MB of activations and
gradients in again. PyTorch's CPU tuning guide swaps in jemalloc or tcmalloc for this; glibc's own `mallopt` does
the part that matters here without a preloaded library. Measured on the 2-core machine, SmolLM2-135M full
fine-tuning step, batch 8 x 100 tokens: 3.2-3.3 s before, 2.6-2.9 s after (docs/benchmarks.md, "Fifth round").

The mmap threshold cannot go above 32 MB, and a 135M-parameter LLM's tied word embedding makes larger blocks every
step (its fp32 gradient, its bf16 copy under autocast: 56-113 MB), so mmap is switched off as well and those come
from the heap too: the demo's stage 2 then faults ~1.1M pages in 25 steps instead of ~4.1M and runs ~10% faster,
with bit-identical losses (docs/benchmarks.md, "Tenth round"). The cost: freed memory is kept, not returned (peak
RSS +0.2-0.3 GB there).
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # the largest value glibc accepts on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 2**31 - 1  # an `int`: never trim the heap top in practice


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds and stop it serving blocks by mmap; True when set. A no-op (False) off
    Linux/glibc, and when the user chose their own through glibc's `MALLOC_*_` environment variables."""
    if not sys.platform.startswith("linux") or any(name.startswith("MALLOC_") for name in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    return all(
        mallopt(option, value)
        for option, value in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_MMAP_MAX, 0))
    )
