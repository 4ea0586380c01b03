"""The realtime websocket endpoint (vLLM's /v1/realtime protocol) driven by a real websocket client on loopback:
the event sequence, the same text as gRPC and as local transcription, bad events, admission, auth, TLS, shutdown;
and the Prometheus metrics scraped over HTTP."""

from __future__ import annotations

import base64
import json
import re
import ssl
import subprocess
import threading
import time
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from servers import start_in_process
from signals import pcm16
from voxtral_client.client import RealtimeClient
from voxtral_runtime.audio import decode_pcm16le
from voxtral_runtime.session import TextPiece

pytestmark = pytest.mark.slow
CHUNK_BYTES = 2560  # 80 ms of PCM16 at 16 kHz


@pytest.fixture(scope="module")
def server(stream_bundle):
    srv = start_in_process(stream_bundle, websocket_port=0, metrics_port=0, max_sessions=2, idle_timeout_s=3.0)
    yield srv
    srv.stop(0)


@pytest.fixture(scope="module")
def url(server):
    return f"ws://127.0.0.1:{server.websocket_port}/v1/realtime"


def local_text(engine, data: bytes) -> str:
    session = engine.session()
    events = session.feed(decode_pcm16le(data)) + session.finish()
    return "".join(e.text for e in events if isinstance(e, TextPiece))


def append(ws, data: bytes) -> None:
    for i in range(0, len(data), CHUNK_BYTES):
        ws.send(json.dumps({"type": "input_audio_buffer.append",
                            "audio": base64.b64encode(data[i : i + CHUNK_BYTES]).decode()}))


def receive_until(ws, kind: str, timeout: float = 60) -> list[dict]:
    """Events up to and including the first of type `kind`."""
    events = []
    while True:
        events.append(json.loads(ws.recv(timeout=timeout)))
        if events[-1]["type"] == kind:
            return events


def transcribe(url: str, data: bytes, commit_first: bool = True) -> list[dict]:
    """One transcription in vLLM's order (update, commit, appends, final commit): every event after the greeting."""
    with connect(url) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        ws.send(json.dumps({"type": "session.update", "model": "mistralai/Voxtral-Mini-4B-Realtime-2602"}))
        if commit_first:
            ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        append(ws, data)
        ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
        return receive_until(ws, "transcription.done")


def scrape(server) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as r:
        return r.read().decode()


def sample(text: str, name: str, labels: str = "") -> float:
    """One sample's value from Prometheus' text format (0 if the series is absent)."""
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_event_sequence_and_the_same_text_as_grpc_and_local(url, server, stream_engine):
    data = pcm16(2.0, seed=31)
    events = transcribe(url, data)
    assert {e["type"] for e in events} <= {"transcription.delta", "transcription.done"}
    deltas = [e["delta"] for e in events if e["type"] == "transcription.delta"]
    done = events[-1]
    expected = local_text(stream_engine, data)
    assert expected and "".join(deltas) == done["text"] == expected
    assert done["usage"]["prompt_tokens"] == len(stream_engine.spec.prompt_ids)
    assert done["usage"]["total_tokens"] == done["usage"]["prompt_tokens"] + done["usage"]["completion_tokens"] > 39
    with RealtimeClient(f"127.0.0.1:{server.port}") as client:
        grpc_text = "".join(e.text for e in client.transcribe([data], 16000) if e.kind == "delta")
    assert grpc_text == expected


def test_audio_appended_before_the_commit_is_transcribed(url, stream_engine):
    data = pcm16(1.5, seed=32)
    assert transcribe(url, data, commit_first=False)[-1]["text"] == local_text(stream_engine, data)


def test_bad_events_get_errors_and_harm_nothing(url, stream_engine):
    data = pcm16(1.5, seed=33)
    bad = [("{not json", "invalid_json"), ('["a list"]', "invalid_json"), ('{"type": "response.create"}', "unknown_event"),
           ('{"type": "input_audio_buffer.append", "audio": "***"}', "invalid_audio"),
           ('{"type": "input_audio_buffer.append", "audio": "AA=="}', "invalid_audio"),  # one byte: not whole samples
           ('{"type": "input_audio_buffer.append"}', "invalid_audio"),
           ('{"type": "input_audio_buffer.append", "audio": ""}', "invalid_audio"),
           ('{"type": "input_audio_buffer.commit", "final": "yes"}', "invalid_json"),
           ('{"type": "session.update", "model": 7}', "invalid_json"), (b"\x00\x01", "invalid_json")]
    with connect(url) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        append(ws, data[: len(data) // 2])
        for message, code in bad:  # in the middle of a transcription
            ws.send(message)
            got = receive_until(ws, "error")  # text decoded meanwhile may come first
            assert all(e["type"] == "transcription.delta" for e in got[:-1]), (message, got)
            assert got[-1]["code"] == code and got[-1]["error"], message
        append(ws, data[len(data) // 2 :])
        ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
        receive_until(ws, "transcription.done")
    # The same audio, cleanly, on a new connection: the bad events changed nothing in the text.
    assert transcribe(url, data)[-1]["text"] == local_text(stream_engine, data)


def test_a_full_server_says_busy_and_keeps_the_audio(url, stream_engine):
    data = pcm16(1.0, seed=34)
    holders = [connect(url) for _ in range(2)]  # max_sessions=2: both slots taken
    try:
        for ws in holders:
            ws.recv(timeout=10)
            ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        time.sleep(0.5)
        with connect(url) as ws:
            ws.recv(timeout=10)
            append(ws, data)
            ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
            assert receive_until(ws, "error")[-1]["code"] == "server_busy"
            holders[0].send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
            receive_until(holders[0], "transcription.done")
            ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
            assert receive_until(ws, "transcription.done")[-1]["text"] == local_text(stream_engine, data)
    finally:
        for ws in holders:
            ws.close()


def test_idle_connection_is_closed_with_an_error(url):
    with connect(url) as ws:
        ws.recv(timeout=10)
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        events = receive_until(ws, "error", timeout=15)  # idle_timeout_s=3
        assert events[-2]["type"] == "transcription.done" and events[-1]["code"] == "idle_timeout"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)


def test_wrong_path_and_access_token(stream_bundle):
    server = start_in_process(stream_bundle, websocket_port=0, max_sessions=1, token="s3cret")
    base = f"ws://127.0.0.1:{server.websocket_port}"
    try:
        for path, headers, status in (("/v1/realtime", {}, 401), ("/v1/realtime", {"Authorization": "Bearer no"}, 401),
                                      ("/other", {"Authorization": "Bearer s3cret"}, 404)):
            with pytest.raises(InvalidStatus) as e:
                connect(base + path, additional_headers=headers, open_timeout=10)
            assert e.value.response.status_code == status
        with connect(base + "/v1/realtime", additional_headers={"Authorization": "Bearer s3cret"}) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
    finally:
        server.stop(0)


def test_tls_and_shutdown_finish_the_transcription_first(stream_bundle, tmp_path, stream_engine):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    tls = (key.read_bytes(), cert.read_bytes())
    server = start_in_process(stream_bundle, websocket_port=0, max_sessions=1, tls=tls)
    context = ssl.create_default_context(cafile=str(cert))
    data = pcm16(1.0, seed=35)
    try:
        with connect(f"wss://localhost:{server.websocket_port}/v1/realtime", ssl=context) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
            ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            append(ws, data)
            time.sleep(1.0)
            stopper = threading.Thread(target=server.stop, args=(20,))
            stopper.start()
            events = receive_until(ws, "error")
            stopper.join(30)
            assert events[-2]["type"] == "transcription.done" and events[-1]["code"] == "server_shutdown"
            assert events[-2]["text"] == local_text(stream_engine, data)  # all the audio sent before the stop
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd.code == 1001
    finally:
        server.stop(0)


def test_metrics_are_scraped_and_move_with_sessions(url, server, stream_engine):
    before = scrape(server)
    data = pcm16(1.0, seed=36)
    transcribe(url, data)
    with RealtimeClient(f"127.0.0.1:{server.port}") as client:
        list(client.transcribe([data], 16000))
    after = scrape(server)
    steps = sample(after, "voxtral_step_seconds_count") - sample(before, "voxtral_step_seconds_count")
    # Each session decodes one step per 80 ms of padded audio that it computes: the leading silence's steps less
    # those the engine's shared start state covers (start_state.py), and 12 of its audio at least (the trailing
    # padding's steps stop early if the model says EOS).
    silence = stream_engine.spec.meta.n_left_pad_tokens - stream_engine.start_state.steps
    assert steps >= 2 * (silence + 12)
    for transport in ("websocket", "grpc"):
        labels = f'{{code="OK",transport="{transport}"}}'
        assert sample(after, "voxtral_sessions_total", labels) == sample(before, "voxtral_sessions_total", labels) + 1
        assert sample(after, "voxtral_sessions_active", f'{{transport="{transport}"}}') == 0
    audio = sample(after, "voxtral_audio_processed_seconds_total") - sample(before, "voxtral_audio_processed_seconds_total")
    assert audio == pytest.approx(2.0, abs=0.01)
    assert sample(after, "voxtral_time_to_first_text_seconds_count") >= 1
    assert sample(after, "voxtral_instances_loaded") >= 1 and sample(after, "voxtral_sessions_limit") == 2
    assert sample(after, "process_resident_memory_bytes") > 0
