"""Every status code and Final reason of realtime.proto produced through a real gRPC channel on loopback.

Where each one is tested:
  OK + END_OF_AUDIO, FLUSH          test_server.py (file, resampled stream and flush)
  INVALID_ARGUMENT                  test_server.py (bad config and audio), test_server_isolation.py (range, mode)
  FAILED_PRECONDITION               here (streaming asked of an offline program)
  RESOURCE_EXHAUSTED + SESSION_LIMIT  test_server_isolation.py (audio, duration, flushes, offline segment),
                                    test_server.py (all slots busy, oversize message)
  UNAUTHENTICATED                   test_server.py (token)
  DEADLINE_EXCEEDED                 test_server.py (idle), test_server_isolation.py (empty messages)
  CANCELLED                         test_server.py (client vanishing frees its slot)
  UNAVAILABLE + SERVER_SHUTDOWN     test_server.py, test_server_faults.py (SIGTERM); here (instance load failure)
  INTERNAL                          test_server_isolation.py (non-finite model outputs)
  MAX_NEW_TOKENS, MODEL_EOS         here
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from servers import finals, start_in_process, transcribe
from signals import speechlike
from voxtral_client.proto import realtime_pb2 as pb

pytestmark = pytest.mark.slow
RATE = 16000


def config(**fields) -> pb.TranscribeRequest:
    return pb.TranscribeRequest(config=pb.SessionConfig(encoding=pb.AUDIO_ENCODING_F32LE, sample_rate_hz=RATE,
                                                        **fields))


def audio(seconds: float, seed: int) -> list[pb.TranscribeRequest]:
    x = np.clip(speechlike(seconds, seed=seed).numpy(), -1, 1).astype("<f4")
    return [pb.TranscribeRequest(audio=x[i : i + 1280].tobytes()) for i in range(0, len(x), 1280)]


def call(port: int, requests):
    return transcribe(f"127.0.0.1:{port}", requests)


@pytest.fixture(scope="module")
def streaming(bundles):
    server = start_in_process(bundles("xnnpack-stream"), max_sessions=2)
    yield server
    server.stop(0)


def test_max_new_tokens_ends_the_call_with_ok(streaming):
    status, _, got = call(streaming.port, [config(max_new_tokens=3, token_ids=True), *audio(3.0, seed=80)])
    ids = [i for r in got if r.WhichOneof("event") == "delta" for i in r.delta.token_ids]
    assert status == grpc.StatusCode.OK and len(ids) == 3
    assert finals(got) == [pb.FINAL_REASON_MAX_NEW_TOKENS]


def test_model_eos_mid_stream_ends_a_segment_and_the_session_goes_on(streaming, monkeypatch):
    """The tiny random model never chooses EOS by itself: its sampler is made to, on the 5th token."""
    engine = streaming.engine
    eos = engine.spec.meta.eos_id
    make_session = engine.session

    def session_with_eos(*args, **kwargs):
        session = make_session(*args, **kwargs)
        inner = getattr(session, "inner", session)
        calls = []

        def sampler(logits):
            calls.append(1)
            return eos if len(calls) == 5 else int(torch.argmax(logits))

        inner.loop.sampler = sampler
        return session

    monkeypatch.setattr(engine, "session", session_with_eos)
    status, _, got = call(streaming.port, [config(), *audio(4.0, seed=81)])
    assert status == grpc.StatusCode.OK
    assert finals(got) == [pb.FINAL_REASON_MODEL_EOS, pb.FINAL_REASON_END_OF_AUDIO]
    eos_final = next(r for r in got if r.WhichOneof("event") == "final")
    assert 0 < eos_final.final.end_s < 4.0


def test_an_instance_that_fails_to_load_is_unavailable_without_server_paths(streaming, monkeypatch):
    engine = streaming.engine
    monkeypatch.setattr(engine, "_spare", [])

    def broken():
        raise OSError("/srv/secret/bundle/model.pte: cannot map file")

    monkeypatch.setattr(engine, "instance", broken)
    status, details, _ = call(streaming.port, [config(), *audio(0.5, seed=82)])
    assert status == grpc.StatusCode.UNAVAILABLE and "could not load a program instance" in details, details
    assert "/srv/secret" not in details
    assert streaming.servicer.pool.active == 0  # the slot was given back


def test_streaming_asked_of_an_offline_program_is_failed_precondition(bundles):
    server = start_in_process(bundles("xnnpack-offline"), max_sessions=1)
    try:
        status, details, _ = call(server.port, [config(), *audio(1.0, seed=83)])
        assert status == grpc.StatusCode.FAILED_PRECONDITION and "offline program" in details, details
        status, _, got = call(server.port, [config(mode=pb.TRANSCRIPTION_MODE_OFFLINE), *audio(1.0, seed=83)])
        assert status == grpc.StatusCode.OK and finals(got) == [pb.FINAL_REASON_END_OF_AUDIO]
    finally:
        server.stop(0)
