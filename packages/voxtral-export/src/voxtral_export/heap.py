"""Handing the memory an export frees back to the system, so a full-size export fits a laptop.

glibc serves a large allocation with its own mmap and raises that threshold (up to 32 MiB) each time such a block is
freed, so after the first few layers the 26 MiB fp32 temporaries of quantization, and later the lowering's buffers,
come from its heap and stay there when freed (measured at full size: 5.75 GiB resident for 0.84 GB of quantized
encoder weights). Two measures, both needed: the threshold is fixed at 1 MiB, so every large block is unmapped when
freed, and `malloc_trim` after each quantized unit returns the heap's free pages. With the trim alone the full-size
streaming export peaked at 17.5 GiB; with both at 13.6 GiB, for about 9 % more quantization time (every temporary
gets a fresh zero-filled mapping; benchmarks/export_full.py). torch.export and the lowering free many small blocks,
which no threshold maps: `trimming` returns them while those phases run. Other C libraries are left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import platform
import threading
from collections.abc import Iterator

M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def return_large_blocks_when_freed() -> bool:
    """Fixes glibc's mmap threshold for this process (True when it took effect; a no-op elsewhere)."""
    libc = _glibc()
    return bool(libc and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def release_freed_memory() -> None:
    """Returns the free pages of glibc's heap to the system (a no-op elsewhere)."""
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)


@contextlib.contextmanager
def trimming(every_s: float = 1.0) -> Iterator[None]:
    """Returns the heap's free pages every `every_s` seconds while the block runs (torch.export and the lowering
    free gigabytes of small blocks that the heap would otherwise keep; a no-op elsewhere)."""
    if _glibc() is None:
        yield
        return
    stop = threading.Event()

    def trim() -> None:
        while not stop.wait(every_s):
            release_freed_memory()

    thread = threading.Thread(target=trim, name="malloc-trim", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        release_freed_memory()
