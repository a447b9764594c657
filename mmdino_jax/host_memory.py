"""Keep freed host memory in the process (glibc malloc), so that XLA:CPU's per-step buffers are reused.

XLA:CPU allocates the step's activations and temporaries afresh at every execution. With glibc's
defaults those buffers are mmapped or trimmed back to the kernel when freed, and the next step pays a
page fault per 4 KiB page it touches again: 10-25 % of the demo's CPU step (bench/README.md).
`keep_freed_memory` makes malloc serve them from one arena's heap and never give it back (the process
keeps its peak footprint). It must run before JAX starts its CPU threads; the CLIs call it first.
mallopt takes an int, so a step whose temporaries exceed 2 GiB still returns the excess; the environment
variables `MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000`, set before Python
starts, have no such limit. `MMDINO_KEEP_FREED_MEMORY=0` opts out.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's malloc.h
_INT_MAX = 2**31 - 1


def keep_freed_memory() -> bool:
    """Tune glibc malloc as above; False where there is no glibc (macOS, musl) or the user opted out."""
    if not sys.platform.startswith("linux") or os.environ.get("MMDINO_KEEP_FREED_MEMORY", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    done = True
    if "MALLOC_ARENA_MAX" not in os.environ:
        done &= mallopt(_M_ARENA_MAX, 1) == 1
    if "MALLOC_MMAP_MAX_" not in os.environ:
        done &= mallopt(_M_MMAP_MAX, 0) == 1
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        done &= mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
    return bool(done)
