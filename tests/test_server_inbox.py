"""The per-call inbox: a session that fell behind takes the audio already waiting in one feed, and nothing else; the
reader stops pulling from the stream once its capacity of audio waits (backpressure)."""

from __future__ import annotations

import threading
import time

from voxtral_client.proto import realtime_pb2 as pb
from voxtral_runtime.inbox import END, GONE, Inbox


def audio(n: int) -> pb.TranscribeRequest:
    return pb.TranscribeRequest(audio=bytes(n))


def filled(items, capacity=1 << 20) -> Inbox:
    inbox = Inbox(iter(items), capacity)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # wait for the reader to take everything (END last)
        with inbox._cond:
            if inbox._items and inbox._items[-1] is END:
                return inbox
        time.sleep(0.01)
    raise AssertionError("the reader did not finish")


def test_takes_waiting_audio_up_to_the_limit_and_stops_at_other_messages():
    flush = pb.TranscribeRequest(control=pb.CONTROL_FLUSH)
    inbox = filled([audio(4), audio(6), flush, audio(8)])
    assert inbox.take_waiting_audio(max_bytes=100) == [bytes(4), bytes(6)]
    assert inbox.get(0) is flush  # the control message stays first in line, in order
    assert inbox.take_waiting_audio(max_bytes=100) == [bytes(8)]
    assert inbox.take_waiting_audio(max_bytes=100) == []  # the half-close is not audio
    assert inbox.get(0) is END
    assert inbox.get(0.01) is None


def test_stops_once_the_limit_is_reached():
    inbox = filled([audio(10), audio(10), audio(10)])
    assert inbox.take_waiting_audio(max_bytes=15) == [bytes(10), bytes(10)]
    assert inbox.get(0).audio == bytes(10)


def test_the_reader_stops_pulling_once_its_capacity_of_audio_waits():
    pulled = []

    def stream():
        for i in range(1000):
            pulled.append(i)
            yield audio(10)

    inbox = Inbox(stream(), capacity=100)
    time.sleep(0.3)
    assert 10 <= len(pulled) <= 12  # 100 bytes held, one more message in the reader's hand
    assert inbox.received_bytes <= 110
    for _ in range(5):
        inbox.get(1)
    time.sleep(0.2)
    assert 15 <= len(pulled) <= 17  # it reads again as the session consumes


def test_a_broken_stream_and_close():
    def broken():
        yield audio(2)
        raise RuntimeError("the client vanished")

    inbox = Inbox(broken(), capacity=100)
    assert inbox.get(1).audio == bytes(2)
    assert inbox.get(1) is GONE

    gate = threading.Event()

    def slow():
        yield audio(2)
        gate.wait(5)
        yield audio(2)

    inbox = Inbox(slow(), capacity=100)
    assert inbox.get(1).audio == bytes(2)
    inbox.close()
    gate.set()
    assert inbox.get(0.2) is None  # nothing taken after close
