"""A session that fell behind takes the audio already waiting in its inbox in one feed, and nothing else."""

from __future__ import annotations

import queue

from voxtral_client.proto import realtime_pb2 as pb
from voxtral_runtime.server import _take_waiting_audio


def audio(n: int) -> pb.TranscribeRequest:
    return pb.TranscribeRequest(audio=bytes(n))


def test_takes_waiting_audio_up_to_the_limit_and_stops_at_other_messages():
    inbox: queue.Queue = queue.Queue()
    flush = pb.TranscribeRequest(control=pb.CONTROL_FLUSH)
    for item in (audio(4), audio(6), flush, audio(8), None):
        inbox.put(item)
    assert _take_waiting_audio(inbox, max_bytes=100) == [bytes(4), bytes(6)]
    assert inbox.get_nowait() is flush  # the control message stays first in line, in order
    assert _take_waiting_audio(inbox, max_bytes=100) == [bytes(8)]
    assert _take_waiting_audio(inbox, max_bytes=100) == []  # half-close (None) is not audio
    assert inbox.get_nowait() is None


def test_stops_once_the_limit_is_reached():
    inbox: queue.Queue = queue.Queue()
    for n in (10, 10, 10):
        inbox.put(audio(n))
    assert _take_waiting_audio(inbox, max_bytes=15) == [bytes(10), bytes(10)]
    assert inbox.qsize() == 1
