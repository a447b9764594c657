"""host_memory.keep_freed_memory: glibc's malloc keeps freed memory, so a repeated step stops page-faulting."""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")

_PROBE = textwrap.dedent("""
    import ctypes, ctypes.util, resource
    from mmdino_jax import host_memory
    print(host_memory.keep_freed_memory())
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]

    def step():  # a 64 MiB buffer written, freed and allocated again, as XLA:CPU does every step
        buffer = libc.malloc(1 << 26)
        ctypes.memset(buffer, 1, 1 << 26)
        libc.free(buffer)

    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _probe(**env) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    kept, faults = out.stdout.split()
    return kept, int(faults)


def test_freed_memory_is_reused_without_page_faults():
    kept, faults = _probe()
    assert kept == "True"
    assert faults < 100  # each 64 MiB buffer would fault 16384 pages if it went back to the kernel
    kept, faults = _probe(MMDINO_KEEP_FREED_MEMORY="0")
    assert kept == "False"
    assert faults > 3 * 16000

