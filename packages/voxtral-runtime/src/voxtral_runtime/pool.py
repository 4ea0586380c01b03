"""Admission: at most `limit` sessions hold a program instance at once.

The instances themselves live in the Engine (its spare list is the one pool of idle instances): a session takes one,
and gives it back when it ends, unless the instance faulted (non-finite outputs), in which case it is dropped and the
next session that needs one loads a fresh one.
"""

from __future__ import annotations

import logging
import threading

from .engine import Engine
from .programs import ModelInstance

log = logging.getLogger("voxtral_runtime.pool")


class PoolFull(Exception):
    """Every session slot is in use."""


class InstanceLoadError(Exception):
    """A new program instance could not be loaded (details are in the server log, not sent to clients)."""


class InstancePool:
    def __init__(self, engine: Engine, limit: int):
        self.engine, self.limit = engine, limit
        self._lock = threading.Lock()
        self.active = 0
        self.discarded = 0  # instances dropped after a fault

    def acquire(self) -> ModelInstance:
        with self._lock:
            if self.active >= self.limit:
                raise PoolFull(f"all {self.limit} sessions are in use; retry later")
            self.active += 1
        try:
            return self.engine.instance()
        except Exception as e:
            with self._lock:
                self.active -= 1
            log.exception("loading a program instance failed")
            raise InstanceLoadError("the server could not load a program instance for this session") from e

    def release(self, instance: ModelInstance) -> None:
        """A session ended normally: its instance serves the next one."""
        self.engine.release(instance)
        with self._lock:
            self.active -= 1

    def discard(self, instance: ModelInstance) -> None:
        """A session's instance faulted: it is dropped, never reused."""
        self.engine.drop(instance)
        del instance
        with self._lock:
            self.active -= 1
            self.discarded += 1
