"""Keeping glibc from holding on to freed memory during a full-size export.

glibc serves a large allocation with its own mmap and raises that threshold (up to 32 MiB) each time such a block is
freed, so after the first few layers the 26 MiB fp32 temporaries of quantization come from the heap and stay there
when freed: measured at full size, 5.75 GiB resident for 0.84 GB of quantized encoder weights. Fixing the threshold
at 1 MiB hands every large block back to the system when it is freed. Other C libraries manage memory their own way
and are left alone.
"""

from __future__ import annotations

import ctypes
import platform

M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def return_large_blocks_when_freed() -> bool:
    """Fixes glibc's mmap threshold for this process; True when it took effect."""
    libc = _glibc()
    return bool(libc and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def release_freed_memory() -> None:
    """Returns the heap's free pages to the system (blocks freed before the threshold was fixed)."""
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)
