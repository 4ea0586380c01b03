"""Server-side endpointing on synthesized speech (espeak-ng) with pauses, through Silero VAD as in production: Finals
at the pauses, the model idle while there is no speech, timestamps in the client's time; the same through gRPC and
the realtime websocket on loopback, and bad settings refused."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys

import grpc
import numpy as np
import pytest
from websockets.sync.client import connect

from servers import start_in_process
from voxtral_client.client import Endpointing, RealtimeClient, RealtimeError
from voxtral_runtime.audio import load_audio, write_wav
from voxtral_runtime.endpointing import EndpointingOptions, EndpointingSession
from voxtral_runtime.bundle import ProgramError
from voxtral_runtime.session import ENDPOINT, MODEL_EOS, SegmentEnd, TextPiece, Timeline

RATE = 16000
PAUSE_S = 4.0
STEP = 1280  # samples per 80 ms step


@pytest.fixture(scope="module")
def utterances(tmp_path_factory):
    """Two spoken phrases at 16 kHz, synthesized by espeak-ng (a system package; .ci/run installs it)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    out = []
    for i, text in enumerate(["one two three four", "five six seven"]):
        path = tmp_path_factory.mktemp("speech") / f"{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), text], check=True)
        speech = load_audio(path, RATE)
        loud = np.flatnonzero(np.abs(speech) > 0.01)
        out.append(speech[loud[0] : loud[-1] + 1])  # without espeak's own leading and trailing silence
    return out


@pytest.fixture(scope="module")
def conversation(utterances):
    """1 s of silence, phrase, 4 s pause, phrase, 4 s pause; and where each phrase starts and ends (s)."""
    silence, pause = np.zeros(RATE, np.float32), np.zeros(int(PAUSE_S * RATE), np.float32)
    audio = np.concatenate([silence, utterances[0], pause, utterances[1], pause])
    first_end = 1 + len(utterances[0]) / RATE
    spans = [(1.0, first_end), (first_end + PAUSE_S, first_end + PAUSE_S + len(utterances[1]) / RATE)]
    return audio, spans



def run(session, audio: np.ndarray, chunk: int = 1600) -> list:
    session.prepare()
    events = []
    for start in range(0, len(audio), chunk):
        events += session.feed(audio[start : start + chunk])
    return events + session.finish()


def test_timeline_skip_keeps_client_time_and_one_run_per_pause():
    timeline = Timeline(left_pad=100, sample_rate=10)
    timeline.skip(at=100, client_samples=0, n=30)  # leading silence skipped: one run, moved on
    timeline.skip(at=100, client_samples=30, n=20)
    assert len(timeline.starts) == 1 and timeline.seconds(100) == 5.0 and timeline.seconds(110) == 6.0
    timeline.skip(at=150, client_samples=100, n=40)  # 50 samples of speech, then a pause of 40
    assert timeline.seconds(149) == pytest.approx(9.9) and timeline.seconds(150) == 14.0
    assert timeline.seconds(160) == 15.0


def test_options_are_checked():
    for bad in (dict(threshold=0.0), dict(threshold=1.0), dict(silence_ms=50), dict(silence_ms=20_000),
                dict(prefix_ms=-1), dict(prefix_ms=5000)):
        with pytest.raises(ValueError, match="endpointing"):
            EndpointingOptions(**bad)


def test_silero_hears_the_speech_and_not_the_silence(utterances):
    from voxtral_runtime.endpointing import FRAME_SAMPLES, SileroDetector

    detector = SileroDetector()
    speech = [detector(utterances[0][i : i + FRAME_SAMPLES]) for i in range(0, len(utterances[0]) - 511, 512)]
    silence = [detector(np.zeros(FRAME_SAMPLES, np.float32)) for _ in range(30)]
    assert max(silence) < 0.1 and np.mean(np.array(speech) > 0.5) > 0.5


@pytest.mark.slow  # needs an exported program
def test_finals_at_the_pauses_and_the_model_idle_in_silence(stream_engine, conversation):
    audio, spans = conversation
    session = stream_engine.session(endpointing=EndpointingOptions(silence_ms=500))
    assert isinstance(session, EndpointingSession)
    events = run(session, audio)
    finals = [e for e in events if isinstance(e, SegmentEnd) and e.reason != MODEL_EOS]  # the model's own ends
    assert [f.reason for f in finals] == [ENDPOINT, ENDPOINT, "end_of_audio"] and finals[-1].text == ""
    for final, (_, end) in zip(finals, spans):  # 500 ms after the speech, give or take the detector's frames
        assert end + 0.4 <= final.end_s <= end + 0.5 + 0.3, (final, end)
    pieces = [e for e in events if isinstance(e, TextPiece)]
    assert pieces[0].start_s >= spans[0][0] - 0.3 - 0.04  # the prefix before the speech, nothing earlier
    for piece in pieces:  # nothing is timed inside a skipped pause
        assert not spans[0][1] + 0.9 < piece.start_s < spans[1][0] - 0.35, piece
        assert piece.end_s - piece.start_s <= 0.08 + 1e-9
    # The silences (1 s lead, the pauses less the 500 ms it takes to detect each and the 300 ms prefix) are skipped;
    # each endpoint's flush decodes 11 steps of padding instead (the 17 of a flush, less the 6 of the pause heard).
    assert session.skipped_samples / RATE >= 1 + 2 * (PAUSE_S - 0.5) - 2 * 0.3 - 0.3 - 0.2
    plain = stream_engine.session()  # the model runs every step of the audio
    plain_finals = [e.reason for e in run(plain, audio) if isinstance(e, SegmentEnd)]
    assert ENDPOINT not in plain_finals
    saved = plain.steps_computed - session.steps_computed
    assert saved >= (session.skipped_samples // STEP) - 2 * 11 - 2 and saved > 40, (plain.steps_computed, saved)
    audio_steps, prompt_steps = len(audio) // STEP, stream_engine.spec.meta.n_left_pad_tokens
    assert session.steps_computed - prompt_steps < audio_steps  # fewer model steps than audio steps


@pytest.mark.slow  # needs an exported program
def test_silence_alone_never_runs_the_model_after_prepare(stream_engine):
    session = stream_engine.session(endpointing=EndpointingOptions())
    session.prepare()
    prepared = session.steps_computed
    events = session.feed(np.zeros(5 * RATE, np.float32)) + session.flush() + session.finish()
    assert session.steps_computed == prepared and session.skipped_samples == 5 * RATE
    assert [(e.reason, e.text) for e in events] == [("flush", ""), ("end_of_audio", "")]
    assert events[-1].end_s == 5.0


@pytest.mark.slow  # needs an exported program
def test_chunking_does_not_change_the_result(stream_engine, conversation):
    audio, _ = conversation
    results = []
    for chunk in (333, 4000, len(audio)):
        events = run(stream_engine.session(endpointing=EndpointingOptions()), audio, chunk)
        results.append([(type(e).__name__, e.text, round(e.start_s, 3), round(e.end_s, 3)) for e in events])
    assert results[0] == results[1] == results[2]


@pytest.mark.slow  # needs an exported program
def test_no_prefix_and_a_long_pause(stream_engine, conversation):
    audio, spans = conversation
    session = stream_engine.session(endpointing=EndpointingOptions(prefix_ms=0, silence_ms=3000))
    events = run(session, audio)
    finals = [e for e in events if isinstance(e, SegmentEnd) and e.reason != MODEL_EOS]
    assert [f.reason for f in finals] == [ENDPOINT, ENDPOINT, "end_of_audio"]
    assert spans[0][1] + 2.9 <= finals[0].end_s <= spans[0][1] + 3.3
    pieces = [e for e in events if isinstance(e, TextPiece)]
    assert pieces[0].start_s >= spans[0][0] - 0.04  # no prefix: nothing before the speech is heard


@pytest.mark.slow  # needs an exported program
def test_an_offline_session_refuses_endpointing(stream_engine):
    with pytest.raises(ProgramError, match="endpointing is for live sessions"):
        stream_engine.session(offline=True, endpointing=EndpointingOptions())


@pytest.mark.slow  # needs an exported program
def test_transcribe_cli_endpointing(stream_bundle, conversation, tmp_path):
    audio, spans = conversation
    wav = tmp_path / "conversation.wav"
    write_wav(wav, audio, RATE)
    run_cli = [sys.executable, "-m", "voxtral_runtime.cli", "transcribe", str(stream_bundle), "--audio_path", str(wav),
               "--json"]
    result = subprocess.run([*run_cli, "--endpointing", "500"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    finals = [e for e in map(json.loads, result.stdout.splitlines()) if e["type"] == "final"]
    assert [f["reason"] for f in finals if f["reason"] != MODEL_EOS] == [ENDPOINT, ENDPOINT, "end_of_audio"]
    endpoints = [f for f in finals if f["reason"] == ENDPOINT]
    assert spans[0][1] + 0.4 <= endpoints[0]["end_s"] <= spans[0][1] + 0.8
    assert "decoder steps for" in result.stderr and "without speech skipped" in result.stderr
    bad = subprocess.run([*run_cli, "--endpointing", "50"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "endpointing silence must be 100-10000 ms, got 50" in bad.stderr


def test_transcribe_cli_refuses_a_bad_endpointing_value_before_loading_anything(tmp_path):
    missing = tmp_path / "no-bundle"
    bad = subprocess.run([sys.executable, "-m", "voxtral_runtime.cli", "transcribe", str(missing), "--audio_path",
                          str(tmp_path / "a.wav"), "--endpointing", "50"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "endpointing silence must be 100-10000 ms, got 50" in bad.stderr


@pytest.fixture(scope="module")
def server(stream_bundle):
    srv = start_in_process(stream_bundle, websocket_port=0, max_sessions=2)
    yield srv
    srv.stop(0)


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


@pytest.mark.slow  # needs an exported program
def test_grpc_endpointing(server, conversation):
    audio, spans = conversation
    client = RealtimeClient(f"127.0.0.1:{server.port}")
    data = pcm16(audio)
    chunks = [data[i : i + 3200] for i in range(0, len(data), 3200)]
    finals = [e for e in client.transcribe(chunks, RATE, endpointing=Endpointing(silence_ms=500))
              if e.is_final and e.reason != "model_eos"]
    assert [f.reason for f in finals] == ["endpoint", "endpoint", "end_of_audio"]
    assert spans[0][1] + 0.4 <= finals[0].end_s <= spans[0][1] + 0.8 and finals[1].end_s > spans[1][1]
    plain = [e.reason for e in client.transcribe(chunks, RATE) if e.is_final]
    assert "endpoint" not in plain and plain[-1] == "end_of_audio"
    for bad, message in ((Endpointing(silence_ms=20), "silence must be"), (Endpointing(threshold=2.0), "threshold")):
        with pytest.raises(RealtimeError) as error:
            list(client.transcribe(chunks[:2], RATE, endpointing=bad))
        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT and message in error.value.message
    with pytest.raises(RealtimeError) as error:
        list(client.transcribe(chunks[:2], RATE, offline=True, endpointing=Endpointing()))
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT and "streaming sessions" in error.value.message


@pytest.mark.slow  # needs an exported program
def test_websocket_turn_detection(server, conversation):
    audio, _ = conversation
    data = pcm16(audio)
    with connect(f"ws://127.0.0.1:{server.websocket_port}/v1/realtime") as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        for bad in ({"type": "semantic_vad"}, {"type": "server_vad", "silence_duration_ms": 1e9},
                    {"type": "server_vad", "threshold": "high"}):
            ws.send(json.dumps({"type": "session.update", "turn_detection": bad}))
            assert json.loads(ws.recv(timeout=30))["type"] == "error"
        ws.send(json.dumps({"type": "session.update", "session": {
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500, "prefix_padding_ms": 300}}}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        for i in range(0, len(data), 2560):
            ws.send(json.dumps({"type": "input_audio_buffer.append",
                                "audio": base64.b64encode(data[i : i + 2560]).decode()}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
        events = []
        while not events or events[-1]["type"] != "transcription.done":
            events.append(json.loads(ws.recv(timeout=120)))
    stops = [e for e in events if e["type"] == "input_audio_buffer.speech_stopped"]
    assert len(stops) == 2 and stops[0]["audio_end_ms"] < stops[1]["audio_start_ms"]
    assert not [e for e in events if e["type"] == "error"]
    deltas = "".join(e["delta"] for e in events if e["type"] == "transcription.delta")
    assert events[-1]["text"] == deltas == "".join(s["text"] for s in stops)
