"""Phase-by-phase progress on stderr, with each phase's duration and the process's peak memory."""

from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager


def peak_rss_gib() -> float:
    """Peak resident memory of this process; ru_maxrss is in KiB on Linux and in bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


class Progress:
    def __init__(self, enabled: bool = True, stream=sys.stderr):
        self.enabled, self.stream = enabled, stream
        self.start = time.monotonic()
        self.durations: dict[str, float] = {}

    def say(self, message: str) -> None:
        if self.enabled:
            print(f"[{time.monotonic() - self.start:7.1f}s] {message}", file=self.stream, flush=True)

    @contextmanager
    def phase(self, name: str):
        self.say(f"{name} ...")
        began = time.monotonic()
        yield
        self.durations[name] = time.monotonic() - began
        self.say(f"{name} done in {self.durations[name]:.1f}s (peak memory {peak_rss_gib():.1f} GiB)")
