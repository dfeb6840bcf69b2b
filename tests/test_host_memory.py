"""host_memory.keep_freed_memory: a large block freed and allocated again faults in no new pages."""

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)

# Allocates, touches and frees a 256 MiB block twice (plain malloc, as XLA:CPU does), and counts
# the minor page faults of the second round. Run in a fresh process: the setting is process-wide.
PROBE = r"""
import ctypes, json, resource, sys
from mkd_jax import host_memory
applied = host_memory.keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
n = 256 << 20
def cycle():
    p = libc.malloc(n)
    libc.memset(p, 1, n)
    libc.free(p)
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
cycle()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _probe(keep: str) -> dict:
    env = dict(os.environ, MKD_JAX_KEEP_FREED_MEMORY=keep)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_block_is_reused_without_page_faults():
    pages = (256 << 20) // 4096
    kept, plain = _probe("1"), _probe("0")
    assert kept["applied"] and not plain["applied"]
    # kept: the second round reuses the heap's pages
    assert kept["faults"] < pages // 512, kept
    # glibc's default: the block is unmapped and mapped again, and every page faults in anew
    # (one per 4 KiB, or per 2 MiB where transparent huge pages are always on)
    assert plain["faults"] > 8 * max(kept["faults"], 1), (plain, kept)
