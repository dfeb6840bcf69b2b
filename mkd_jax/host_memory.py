"""Keep freed host memory for reuse: XLA:CPU's large temporaries otherwise fault in every page.

XLA:CPU takes each execution's temporary buffers from the C library's `malloc` and frees them
when the call ends; one self-attention of base's encoder at 30 s holds [4, 8, 1500, 1500]
float32 scores (288 MB at batch 4). glibc serves a block above 32 MiB (64 MiB in a thread's
arena) with a fresh `mmap` and returns it with `munmap`, so every call of a jitted step or
encoder faults in and zeroes each of those pages again: 4 KiB at a time, in the kernel. On the
2-core CPU that page-fault work cost one encoder attention more than the arithmetic (0.52 s ->
0.20 s with the settings below; BUILD_NOTES "Host memory").

`keep_freed_memory()` tells glibc, through `mallopt`, to serve large blocks from the heap
(`M_MMAP_MAX = 0`), to keep what is freed there for the next call (`M_TRIM_THRESHOLD` at its
largest) and to give every thread the main heap (`M_ARENA_MAX = 1`: a thread arena's heap cannot
hold a block over 64 MiB, and XLA allocates from its worker threads). The process's resident
memory then stays near its peak instead of falling between calls. Every command calls it
(`cli.run`); `MKD_JAX_KEEP_FREED_MEMORY=0` leaves malloc as it is. It does nothing where the C
library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

ENV = "MKD_JAX_KEEP_FREED_MEMORY"

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Applies the settings once per process; True when they are in force."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV, "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _INT_MAX), (M_ARENA_MAX, 1))
    ok = all(libc.mallopt(param, value) == 1 for param, value in settings)
    if not ok:
        logging.getLogger(__name__).warning("mallopt refused a setting: malloc left as it is")
    _applied = ok
    return ok
