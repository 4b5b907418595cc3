"""Tells glibc's malloc to keep the memory a process frees, for a process that allocates and frees buffers of
the same large sizes over and over (a gateway's rows, gradients and messages, every batch).

By default glibc gives freed memory at the top of a heap back to the kernel once more than a threshold is
free, and serves large blocks with mmap: either way the next batch's buffers are fresh pages, which the
kernel faults in and zeroes one by one.  On the training bench that was about a third of a gateway's CPU
per step.  Without glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1      # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 256 << 20   # free memory a heap keeps before it is trimmed
MMAP_THRESHOLD = 32 << 20    # blocks from this size up are mmapped: glibc's largest (half a 64-bit arena's heap)


def keep_freed_memory() -> bool:
    """Sets malloc's thresholds for this process; False when this is not glibc or it refused them."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    trim = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    mmap = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return trim == 1 and mmap == 1
