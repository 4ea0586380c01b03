"""No client can harm another, through a real gRPC channel on loopback: out-of-range audio is refused or clipped and
leaves later sessions unchanged; a session whose model outputs turn non-finite ends with INTERNAL and its instance is
discarded; a client that sends far faster than the model runs is slowed by flow control with bounded server memory;
every session limit ends the session with the text of the audio accepted before it."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import torch

from servers import ServerProcess, finals, start_in_process, transcribe
from signals import speechlike
from voxtral_client.client import RealtimeClient
from voxtral_client.proto import realtime_pb2 as pb
from voxtral_client.proto import realtime_pb2_grpc as pb_grpc
from voxtral_runtime.session import TextPiece

pytestmark = pytest.mark.slow
RATE = 16000


@pytest.fixture(scope="module")
def one_slot(stream_bundle):
    """A server with a single program instance, so every session reuses the previous session's instance."""
    server = start_in_process(stream_bundle, max_sessions=1, idle_timeout_s=3.0)
    yield server
    server.stop(0)


def f32(audio: np.ndarray) -> list[pb.TranscribeRequest]:
    return [pb.TranscribeRequest(audio=audio[i : i + 1280].astype("<f4").tobytes()) for i in range(0, len(audio), 1280)]


def config(encoding=pb.AUDIO_ENCODING_F32LE, **fields) -> pb.TranscribeRequest:
    return pb.TranscribeRequest(config=pb.SessionConfig(encoding=encoding, sample_rate_hz=RATE, token_ids=True,
                                                        **fields))


def call(port: int, requests, timeout=60):
    return transcribe(f"127.0.0.1:{port}", requests, timeout)


def text_and_ids(responses) -> tuple[str, list[int]]:
    deltas = [r.delta for r in responses if r.WhichOneof("event") == "delta"]
    return "".join(d.text for d in deltas), [i for d in deltas for i in d.token_ids]


def local(engine, audio: np.ndarray, cut: bool = False) -> tuple[str, list[int]]:
    session = engine.session(token_ids=True)
    events = session.feed(audio) + session.finish()
    pieces = [e for e in events if isinstance(e, TextPiece)]
    return "".join(p.text for p in pieces), [i for p in pieces for i in p.token_ids]


def clean_audio(seconds=2.0, seed=41) -> np.ndarray:
    return np.clip(speechlike(seconds, seed=seed).numpy(), -1, 1)


def test_huge_samples_are_refused_and_later_sessions_are_unchanged(one_slot, stream_engine):
    """The poisoning of the issue: a chunk of 3e38 used to leave the reused instance producing empty or wrong text."""
    audio = clean_audio()
    reference = local(stream_engine, audio)
    assert reference[1]
    status, _, responses = call(one_slot.port, [config(), *f32(audio)])
    assert status == grpc.StatusCode.OK and text_and_ids(responses) == reference
    hostile = np.full(RATE, 3e38, dtype=np.float32)
    status, details, _ = call(one_slot.port, [config(), *f32(audio[:RATE]), *f32(hostile)])
    assert status == grpc.StatusCode.INVALID_ARGUMENT and "magnitude 3e+38" in details, details
    for _ in range(4):
        status, _, responses = call(one_slot.port, [config(), *f32(audio)])
        assert status == grpc.StatusCode.OK and text_and_ids(responses) == reference


def test_samples_slightly_over_full_scale_are_clipped(one_slot, stream_engine):
    audio = clean_audio(seed=42) * 4  # peaks over 1: a float WAV that was not normalized
    assert np.abs(audio).max() > 1.2
    status, _, responses = call(one_slot.port, [config(), *f32(audio)])
    assert status == grpc.StatusCode.OK
    assert text_and_ids(responses) == local(stream_engine, np.clip(audio, -1, 1))


class NonFinite:
    """Stands in for a program method whose outputs turned NaN (what a corrupted cache produces)."""

    def __init__(self, method):
        self.method = method

    def execute(self, inputs):
        return [torch.full_like(out, float("nan")) for out in self.method.execute(inputs)]


def test_a_session_whose_outputs_turn_non_finite_ends_with_internal_and_its_instance_is_discarded(one_slot,
                                                                                                 stream_engine):
    audio = clean_audio(seed=43)
    reference = local(stream_engine, audio)
    instance = one_slot.engine._spare[-1]  # the idle instance the next session will take
    instance.text_decoder = NonFinite(instance.text_decoder)
    status, details, _ = call(one_slot.port, [config(), *f32(audio)])
    assert status == grpc.StatusCode.INTERNAL and "non-finite" in details and "discarded" in details, details
    assert one_slot.servicer.pool.discarded == 1
    assert instance not in one_slot.engine._spare
    status, _, responses = call(one_slot.port, [config(), *f32(audio)])  # a fresh instance
    assert status == grpc.StatusCode.OK and text_and_ids(responses) == reference


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def test_an_hour_of_audio_sent_at_once_is_slowed_by_flow_control_with_bounded_memory(stream_bundle, tmp_path):
    """The client tries to push 3600 s of audio as fast as it can; the server holds at most --max-buffered-audio
    of it, so the client's sends wait, the server's memory stays flat and every response says how far behind it is.
    The bound is on how far the client runs ahead of the model, not on a count: a faster model takes more audio."""
    server = ServerProcess(stream_bundle, tmp_path, "--max-sessions", "1", "--max-buffered-audio", "2")
    try:
        one_second = (clean_audio(1.0, seed=44) * 32767).astype("<i2").tobytes()
        pulled = []

        def hour():
            yield config(pb.AUDIO_ENCODING_PCM16LE)
            for i in range(3600):
                pulled.append(i)
                yield pb.TranscribeRequest(audio=one_second)

        pid = server.proc.pid
        before = rss_mib(pid)
        with grpc.insecure_channel(server.address) as channel:
            responses = pb_grpc.RealtimeStub(channel).Transcribe(hour(), timeout=120)
            lags, ahead, started = [], [], time.monotonic()
            for r in responses:
                lags.append(r.audio_received_s - r.audio_processed_s)
                ahead.append(len(pulled) - r.audio_processed_s)
                if time.monotonic() - started > 8:
                    break
            during = rss_mib(pid)
            responses.cancel()
        # Ahead of the model: the 2 s buffer, gRPC's 64 KiB receive window (2 s of PCM16), a message in the model's
        # hands and a few in the client's send queue (measured: 8 s; 135-264 s if the window may grow).
        assert max(ahead) < 16, f"the client ran {max(ahead):.0f} s ahead of the model"
        assert len(pulled) < 3600, "flow control never slowed the client"
        assert max(lags) < 2 + 1 + 0.5, max(lags)  # buffered audio, one message, a step and the look-ahead
        assert during - before < 60, (before, during)
        with RealtimeClient(server.address) as client:  # the slot is free again
            assert client.describe().limits.max_buffered_audio_s == 2
    finally:
        server.stop()


@pytest.fixture(scope="module")
def limited(stream_bundle):
    server = start_in_process(stream_bundle, max_sessions=2, idle_timeout_s=2.0, max_session_audio_s=2.0,
                              max_flushes=2, max_session_duration_s=4.0, max_offline_audio_s=1.0)
    yield server
    server.stop(0)


def test_describe_reports_every_limit(limited):
    with RealtimeClient(f"127.0.0.1:{limited.port}") as client:
        limits = client.describe().limits
    assert (limits.max_session_audio_s, limits.max_flushes, limits.max_session_duration_s,
            limits.max_offline_audio_s, limits.idle_timeout_s) == (2.0, 2, 4.0, 1.0, 2.0)
    # One token per 80 ms step of the 2 s, the 32 steps of leading silence, 19 of padding per flush and the end.
    assert limits.max_new_tokens == 25 + 32 + 3 * 19 and limits.max_buffered_audio_s == 10.0


def test_the_session_audio_limit_transcribes_up_to_it(limited, stream_engine):
    audio = clean_audio(3.0, seed=45)
    status, details, responses = call(limited.port, [config(), *f32(audio)])
    assert status == grpc.StatusCode.RESOURCE_EXHAUSTED and "2 s audio limit" in details, details
    assert finals(responses) == [pb.FINAL_REASON_SESSION_LIMIT]
    assert responses[-1].final.end_s == pytest.approx(2.0)
    assert text_and_ids(responses) == local(stream_engine, audio[: 2 * RATE])


def test_flushes_are_limited_and_an_empty_flush_costs_no_model_step(limited):
    flush = pb.TranscribeRequest(control=pb.CONTROL_FLUSH)
    status, details, responses = call(limited.port, [config(), flush, flush, flush])
    assert status == grpc.StatusCode.RESOURCE_EXHAUSTED and "more than 2 flushes" in details, details
    assert finals(responses) == [pb.FINAL_REASON_FLUSH, pb.FINAL_REASON_FLUSH, pb.FINAL_REASON_SESSION_LIMIT]
    assert all(r.audio_processed_s == 0 for r in responses)


def test_empty_audio_messages_do_not_keep_a_session_alive(limited):
    def trickle():
        yield config()
        for _ in range(20):
            yield pb.TranscribeRequest(audio=b"")
            time.sleep(0.25)

    started = time.monotonic()
    status, details, _ = call(limited.port, trickle())
    assert status == grpc.StatusCode.DEADLINE_EXCEEDED and "no audio or control for 2 s" in details, details
    assert time.monotonic() - started < 4


def test_the_session_duration_limit_holds_however_little_audio_is_sent(limited):
    def drip():
        yield config()
        for _ in range(40):
            yield pb.TranscribeRequest(audio=np.zeros(16, "<f4").tobytes())  # 1 ms of audio every 0.2 s
            time.sleep(0.2)

    status, details, responses = call(limited.port, drip())
    assert status == grpc.StatusCode.RESOURCE_EXHAUSTED and "4 s limit" in details, details
    assert finals(responses) == [pb.FINAL_REASON_SESSION_LIMIT]


def test_offline_mode_on_a_streaming_program_gives_the_streaming_text_at_the_end(one_slot, stream_engine):
    audio = clean_audio(2.0, seed=46)
    status, _, responses = call(one_slot.port, [config(mode=pb.TRANSCRIPTION_MODE_OFFLINE), *f32(audio)])
    assert status == grpc.StatusCode.OK and text_and_ids(responses) == local(stream_engine, audio)
    assert finals(responses) == [pb.FINAL_REASON_END_OF_AUDIO]


def test_an_offline_segment_over_the_limit_is_transcribed_up_to_it(limited, stream_engine):
    audio = clean_audio(2.0, seed=47)
    status, details, responses = call(limited.port, [config(mode=pb.TRANSCRIPTION_MODE_OFFLINE), *f32(audio)])
    assert status == grpc.StatusCode.RESOURCE_EXHAUSTED and "offline segment" in details, details
    assert finals(responses) == [pb.FINAL_REASON_SESSION_LIMIT]
    assert text_and_ids(responses) == local(stream_engine, audio[:RATE])  # exactly the first second
    assert responses[-1].final.end_s == pytest.approx(1.0)


@pytest.mark.parametrize("fields, message", [
    (dict(mode=7), "unknown mode 7"),
    (dict(temperature=float("inf")), "finite"),
    (dict(temperature=float("nan")), "finite"),
])
def test_bad_session_settings_are_invalid_argument(one_slot, fields, message):
    status, details, _ = call(one_slot.port, [config(**fields)])
    assert status == grpc.StatusCode.INVALID_ARGUMENT and message in details, details
