"""A call's request stream, read ahead by a thread of its own, with a bound on the audio it holds.

The thread lets the session loop enforce timeouts and notice shutdown while it waits for the client. The bound is
the backpressure: once `capacity` bytes of audio wait unread by the model, the thread stops pulling messages from
gRPC, whose flow control then stops the client from sending more. A client can therefore run ahead of the model by
at most the capacity plus gRPC's own 64 KiB window (the server turns off the window's growth), however fast it
sends.
"""

from __future__ import annotations

import threading
from collections import deque

END = object()  # the client half-closed its stream
GONE = object()  # the stream broke (the client cancelled or vanished)


def audio_bytes(request) -> int:
    return len(request.audio) if request.WhichOneof("request") == "audio" else 0


class Inbox:
    def __init__(self, requests, capacity: int):
        self.capacity = capacity  # audio bytes held before the reader waits
        self._items: deque = deque()
        self._held = 0  # audio bytes in _items
        self._closed = False
        self._cond = threading.Condition()
        self.received_bytes = 0  # audio bytes taken from the stream so far
        threading.Thread(target=self._read, args=(requests,), daemon=True, name="inbox").start()

    def _read(self, requests) -> None:
        try:
            for request in requests:
                size = audio_bytes(request)
                with self._cond:
                    while self._held >= self.capacity and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    self._items.append(request)
                    self._held += size
                    self.received_bytes += size
                    self._cond.notify_all()
            self._put(END)
        except Exception:  # grpc raises when the client cancels or vanishes
            self._put(GONE)

    def _put(self, item) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    def set_capacity(self, capacity: int) -> None:
        with self._cond:
            self.capacity = capacity
            self._cond.notify_all()

    def get(self, timeout: float):
        """The next request, END or GONE; None if nothing arrived within `timeout` seconds."""
        with self._cond:
            if not self._items and not self._cond.wait_for(lambda: self._items, timeout):
                return None
            item = self._items.popleft()
            if item is not END and item is not GONE:
                self._held -= audio_bytes(item)
            self._cond.notify_all()
            return item

    def take_waiting_audio(self, max_bytes: int) -> list[bytes]:
        """The payloads of the audio messages at the head, up to `max_bytes`, without waiting; stops at the first
        message of another kind, which stays first in line."""
        taken, size = [], 0
        with self._cond:
            while self._items and size < max_bytes:
                head = self._items[0]
                if head is END or head is GONE or head.WhichOneof("request") != "audio":
                    break
                taken.append(self._items.popleft().audio)
                size += len(taken[-1])
            self._held -= size
            if taken:
                self._cond.notify_all()
        return taken

    def empty(self) -> bool:
        with self._cond:
            return not self._items

    def close(self) -> None:
        """Takes no more messages from the stream (shutdown); what is already held can still be read."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
