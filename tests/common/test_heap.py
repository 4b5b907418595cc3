"""keep_freed_memory: after it, a block of a few MB comes from malloc's heap, not from an mmap of its own that
free gives back to the kernel (and the next block of that size faults in afresh)."""

import platform
import subprocess
import sys

import pytest

MMAPPED_BYTES = """
import ctypes, ctypes.util, sys
from embps.common.heap import keep_freed_memory
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype, libc.malloc.restype = MallInfo2, ctypes.c_void_p
if sys.argv[1] == "keep":
    assert keep_freed_memory()
block = libc.malloc(8 << 20)
print(libc.mallinfo2().hblkhd)
libc.free(ctypes.c_void_p(block))
"""


def mmapped_bytes_with_a_block(mode: str) -> int:
    return int(subprocess.run([sys.executable, "-c", MMAPPED_BYTES, mode], check=True, capture_output=True,
                              text=True).stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc's thresholds are glibc's")
def test_a_large_block_comes_from_the_heap():
    assert mmapped_bytes_with_a_block("default") >= 8 << 20
    assert mmapped_bytes_with_a_block("keep") < 8 << 20
