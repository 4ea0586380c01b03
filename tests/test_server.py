"""The gRPC server through a real channel on loopback: results equal local transcription, concurrent sessions,
every bad input gets its status code while the server keeps serving, auth, TLS, health, reflection, SIGTERM."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from servers import ServerProcess, start_in_process
from signals import pcm16, speechlike
from voxtral_client.client import FLUSH, RealtimeClient, RealtimeError
from voxtral_client.proto import realtime_pb2 as pb
from voxtral_client.proto import realtime_pb2_grpc as pb_grpc
from voxtral_runtime.audio import decode_pcm16le, write_wav
from voxtral_runtime.session import TextPiece

pytestmark = pytest.mark.slow
MAX_MESSAGE = 1 << 20


@pytest.fixture(scope="module")
def server(stream_bundle):
    srv = start_in_process(stream_bundle, max_sessions=5, idle_timeout_s=3.0, max_message_bytes=MAX_MESSAGE)
    yield srv
    srv.stop(0)


@pytest.fixture(scope="module")
def address(server):
    return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def stub(address):
    channel = grpc.insecure_channel(address)
    yield pb_grpc.RealtimeStub(channel)
    channel.close()


def local_result(engine, data: bytes):
    session = engine.session(token_ids=True)
    events = session.feed(decode_pcm16le(data)) + session.finish()
    pieces = [e for e in events if isinstance(e, TextPiece)]
    return "".join(p.text for p in pieces), [i for p in pieces for i in p.token_ids]


def stream(address, data: bytes, chunk: int = 2560, **kwargs):
    with RealtimeClient(address) as client:
        events = list(client.transcribe((data[i : i + chunk] for i in range(0, len(data), chunk)), 16000,
                                        token_ids=True, **kwargs))
    deltas = [e for e in events if e.kind == "delta"]
    return "".join(e.text for e in deltas), [i for e in deltas for i in e.token_ids], events


def test_health_and_reflection(address):
    channel = grpc.insecure_channel(address)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "voxtral.realtime.v1.Realtime"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    reply = next(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in reply.list_services_response.service}
    assert {"voxtral.realtime.v1.Realtime", "grpc.health.v1.Health"} <= names
    channel.close()


def test_describe(address):
    with RealtimeClient(address) as client:
        d = client.describe()
    assert d.program == pb.PROGRAM_KIND_STREAMING and d.delay_ms == 480 and d.step_ms == 80
    assert d.limits.max_sessions == 5 and d.limits.max_message_bytes == MAX_MESSAGE
    assert d.model.startswith("tiny")  # the checkpoint directory the bundle came from, not the bundle's name
    assert d.max_seq_len == 0 and d.decoder_window_tokens > 0  # a streaming program: unbounded sessions


def test_file_through_the_server_equals_local_transcription(address, stream_engine, stream_bundle, tmp_path):
    data = pcm16(4.0, seed=21)
    text, ids, events = stream(address, data)
    assert (text, ids) == local_result(stream_engine, data) and text
    assert events[0].kind == "started" and events[-1].kind == "final" and events[-1].reason == "end_of_audio"
    assert events[-1].audio_processed_s == pytest.approx(4.0)
    # ... and equals the CLI on the same file.
    wav = tmp_path / "a.wav"
    write_wav(wav, decode_pcm16le(data), 16000)
    command = [sys.executable, "-m", "voxtral_runtime.cli", "transcribe", str(stream_bundle), "--audio_path", str(wav),
               "--json", "--token-ids"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    cli = [json.loads(line) for line in out.splitlines()]
    assert "".join(e["text"] for e in cli if e["type"] == "text") == text
    assert [i for e in cli if e["type"] == "text" for i in e["token_ids"]] == ids


def test_concurrent_sessions_are_each_correct(address, stream_engine):
    inputs = [pcm16(2.5, seed=30 + i) for i in range(4)]
    results: dict[int, tuple] = {}

    def run(i):
        results[i] = stream(address, inputs[i], chunk=1280 + 640 * i)[:2]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, data in enumerate(inputs):
        assert results[i] == local_result(stream_engine, data), i
    assert len({r[0] for r in results.values()}) == 4


def test_resampled_stream_and_flush(address):
    audio = np.clip(speechlike(2.0, seed=22).numpy(), -1, 1)
    rate = 44100
    upsampled = np.interp(np.arange(int(2.0 * rate)) / rate, np.arange(len(audio)) / 16000, audio).astype("<f4")
    with RealtimeClient(address) as client:
        chunks = [upsampled[: rate], FLUSH, upsampled[rate:]]
        events = list(client.transcribe(iter(chunks), rate, encoding="f32le"))
    finals = [e for e in events if e.kind == "final"]
    assert [f.reason for f in finals] == ["flush", "end_of_audio"]
    assert finals[0].end_s == pytest.approx(1.0, abs=0.01) and finals[1].end_s == pytest.approx(2.0, abs=0.01)


def call(stub, requests, timeout=30):
    """Runs a Transcribe call to completion; returns (status code, details, responses)."""
    responses = []
    try:
        for r in stub.Transcribe(iter(requests), timeout=timeout):
            responses.append(r)
        return grpc.StatusCode.OK, "", responses
    except grpc.RpcError as e:
        return e.code(), e.details(), responses


CONFIG = pb.TranscribeRequest(config=pb.SessionConfig(encoding=pb.AUDIO_ENCODING_PCM16LE, sample_rate_hz=16000))
AUDIO = pb.TranscribeRequest(audio=b"\x00\x01" * 800)


@pytest.mark.parametrize("requests, code, message", [
    ([AUDIO], grpc.StatusCode.INVALID_ARGUMENT, "first message must be a SessionConfig"),
    ([CONFIG, AUDIO, CONFIG], grpc.StatusCode.INVALID_ARGUMENT, "a second SessionConfig"),
    ([pb.TranscribeRequest(config=pb.SessionConfig(sample_rate_hz=16000))], grpc.StatusCode.INVALID_ARGUMENT,
     "unknown audio encoding"),
    ([pb.TranscribeRequest(config=pb.SessionConfig(encoding=7, sample_rate_hz=16000))],
     grpc.StatusCode.INVALID_ARGUMENT, "unknown audio encoding"),
    ([CONFIG, pb.TranscribeRequest(audio=b"\x00\x01\x02")], grpc.StatusCode.INVALID_ARGUMENT, "even number of bytes"),
    ([pb.TranscribeRequest(config=pb.SessionConfig(encoding=pb.AUDIO_ENCODING_F32LE, sample_rate_hz=16000)),
      pb.TranscribeRequest(audio=np.array([0.1, np.nan], dtype="<f4").tobytes())],
     grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
    ([pb.TranscribeRequest(config=pb.SessionConfig(encoding=pb.AUDIO_ENCODING_F32LE, sample_rate_hz=16000)),
      pb.TranscribeRequest(audio=np.array([np.inf], dtype="<f4").tobytes())], grpc.StatusCode.INVALID_ARGUMENT,
     "inf"),
    ([pb.TranscribeRequest(config=pb.SessionConfig(encoding=pb.AUDIO_ENCODING_PCM16LE, sample_rate_hz=0))],
     grpc.StatusCode.INVALID_ARGUMENT, "sample_rate_hz 0"),
    ([pb.TranscribeRequest(config=pb.SessionConfig(encoding=pb.AUDIO_ENCODING_PCM16LE, sample_rate_hz=10**9))],
     grpc.StatusCode.INVALID_ARGUMENT, "sample_rate_hz 1000000000"),
    ([pb.TranscribeRequest(config=pb.SessionConfig(encoding=pb.AUDIO_ENCODING_PCM16LE, sample_rate_hz=16000,
                                                   temperature=-1))], grpc.StatusCode.INVALID_ARGUMENT,
     "temperature"),
    ([CONFIG, pb.TranscribeRequest(audio=b"\x00" * (MAX_MESSAGE + 10))], grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    ([], grpc.StatusCode.INVALID_ARGUMENT, "empty stream"),
])
def test_bad_input_gets_its_status_and_the_server_keeps_serving(stub, address, stream_engine, requests, code, message):
    status, details, _ = call(stub, requests)
    assert status == code and message.lower() in details.lower(), details
    data = pcm16(1.0, seed=23)
    assert stream(address, data)[:2] == local_result(stream_engine, data)


def active_sessions(address) -> int:
    with RealtimeClient(address) as client:
        return client.describe().limits.active_sessions


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_client_vanishing_frees_its_session(stub, address):
    gate = threading.Event()

    def requests():
        yield CONFIG
        yield AUDIO
        gate.wait(10)

    responses = stub.Transcribe(requests())
    next(responses)  # started
    assert wait_for(lambda: active_sessions(address) == 1)
    responses.cancel()
    gate.set()
    assert wait_for(lambda: active_sessions(address) == 0)


def test_idle_session_times_out(stub):
    def requests():
        yield CONFIG
        time.sleep(6)

    status, details, _ = call(stub, requests())
    assert status == grpc.StatusCode.DEADLINE_EXCEEDED and "no audio or control for 3 s" in details


def test_too_many_sessions(stub, address, stream_engine):
    gates, calls = [], []
    for _ in range(5):
        gate = threading.Event()

        def requests(gate=gate):
            yield CONFIG
            gate.wait(20)

        responses = stub.Transcribe(requests())
        next(responses)
        gates.append(gate)
        calls.append(responses)
    status, details, _ = call(stub, [CONFIG, AUDIO])
    assert status == grpc.StatusCode.RESOURCE_EXHAUSTED and "all 5 sessions are in use" in details
    for gate in gates:
        gate.set()
    for responses in calls:
        assert list(responses)[-1].final.reason == pb.FINAL_REASON_END_OF_AUDIO
    data = pcm16(1.0, seed=24)
    assert stream(address, data)[:2] == local_result(stream_engine, data)


def test_access_token(stream_bundle):
    server = start_in_process(stream_bundle, max_sessions=1, token="s3cret")
    address = f"127.0.0.1:{server.port}"
    try:
        for token, ok in ((None, False), ("wrong", False), ("s3cret", True)):
            with RealtimeClient(address, token=token) as client:
                if ok:
                    assert client.describe().limits.auth_required
                    assert list(client.transcribe([b"\x00\x00" * 1600], 16000))[-1].reason == "end_of_audio"
                else:
                    with pytest.raises(RealtimeError) as e:
                        list(client.transcribe([b"\x00\x00" * 1600], 16000))
                    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.stop(0)


def test_tls(stream_bundle, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    server = start_in_process(stream_bundle, max_sessions=1, tls=(key.read_bytes(), cert.read_bytes()))
    try:
        with RealtimeClient(f"localhost:{server.port}", tls=True, ca_cert=cert) as client:
            assert client.describe().program == pb.PROGRAM_KIND_STREAMING
        with RealtimeClient(f"localhost:{server.port}") as plaintext:
            with pytest.raises(RealtimeError) as e:
                plaintext.describe(timeout=5)
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)


def test_sigterm_transcribes_what_was_received_and_says_the_server_stopped(stream_bundle, tmp_path):
    proc = ServerProcess(stream_bundle, tmp_path, "--grace", "20")
    try:
        data = pcm16(3.0, seed=25)
        sent = threading.Event()

        def chunks():
            for i in range(0, len(data), 3200):
                if i == 3200 * 5:
                    sent.set()
                yield data[i : i + 3200]
                time.sleep(0.05)

        events = []
        with RealtimeClient(proc.address) as client:
            iterator = client.transcribe(chunks(), 16000)
            events.append(next(iterator))
            assert events[0].kind == "started"
            sent.wait(10)
            proc.terminate()
            with pytest.raises(RealtimeError) as error:
                for event in iterator:
                    events.append(event)
        assert error.value.code == grpc.StatusCode.UNAVAILABLE and "shutting down" in error.value.message
        final = events[-1]
        assert final.kind == "final" and final.reason == "server_shutdown"  # not end_of_audio: the audio was cut
        assert 0.4 < final.end_s < 3.0 and final.audio_processed_s == pytest.approx(final.end_s)
        assert proc.proc.wait(30) == 0
    finally:
        proc.stop()
