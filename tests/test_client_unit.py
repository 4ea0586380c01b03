"""voxtral-client without the real server: WAV chunking, pacing, events, arguments, connection and microphone errors,
and the client/CLI against a small in-process fake of the Realtime service (which checks the wire protocol)."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import types
import wave
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest

from voxtral_client import audio as client_audio
from voxtral_client.audio import (
    F32LE,
    PCM16LE,
    AudioError,
    WavAudio,
    chunk_samples,
    file_chunks,
    read_wav,
)
from voxtral_client.cli import Printer, format_event, main
from voxtral_client.client import FLUSH, Event, RealtimeClient, RealtimeError, encode_chunk
from voxtral_client.proto import realtime_pb2 as pb
from voxtral_client.proto import realtime_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent


def write_wav(path: Path, samples: np.ndarray, rate: int, width: int = 2) -> Path:
    """samples: int array (frames,) or (frames, channels) already at `width` bytes."""
    frames = samples if samples.ndim == 2 else samples[:, None]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(frames.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        if width == 3:
            raw = frames.astype("<i4").reshape(-1, 1).view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
        else:
            raw = frames.astype({1: np.uint8, 2: "<i2", 4: "<i4"}[width]).tobytes()
        w.writeframes(raw)
    return path


def write_float_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE"
                     + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------------------------
# WAV reading and chunking
# --------------------------------------------------------------------------------------------------------------


def test_read_wav_pcm16_mono_is_sent_unchanged(tmp_path):
    x = (np.arange(4410) % 200 - 100).astype(np.int16) * 100
    wav = read_wav(write_wav(tmp_path / "a.wav", x, 44100))
    assert (wav.encoding, wav.sample_rate, wav.num_samples) == (PCM16LE, 44100, 4410)
    assert wav.data == x.astype("<i2").tobytes()
    assert wav.duration_s == pytest.approx(0.1)


def test_read_wav_downmixes_and_converts(tmp_path):
    stereo = np.stack([np.full(100, 1000), np.full(100, 3000)], axis=1)
    wav = read_wav(write_wav(tmp_path / "s.wav", stereo, 8000))
    assert wav.encoding == PCM16LE and set(np.frombuffer(wav.data, "<i2")) == {2000}

    x24 = np.array([0, 2**22, -(2**23)])
    wav = read_wav(write_wav(tmp_path / "b24.wav", x24, 16000, width=3))
    assert wav.encoding == F32LE
    np.testing.assert_allclose(np.frombuffer(wav.data, "<f4"), [0.0, 0.5, -1.0])

    f = np.array([0.25, -0.5, 1.0], np.float32)
    wav = read_wav(write_float_wav(tmp_path / "f.wav", f, 22050))  # the stdlib wave rejects float WAVs
    assert (wav.encoding, wav.sample_rate) == (F32LE, 22050)
    np.testing.assert_array_equal(np.frombuffer(wav.data, "<f4"), f)


def test_read_wav_errors(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav file at all")
    with pytest.raises(AudioError, match="bad.wav"):
        read_wav(bad)
    zero_rate = tmp_path / "zero-rate.wav"  # the stdlib writer refuses rate 0, so the header is written by hand
    fmt, data = struct.pack("<HHIIHH", 1, 1, 0, 0, 2, 16), bytes(20)
    zero_rate.write_bytes(b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt " + struct.pack("<I", 16)
                          + fmt + b"data" + struct.pack("<I", len(data)) + data)
    with pytest.raises(AudioError, match="sample rate 0 Hz is outside 4000..384000"):
        read_wav(zero_rate)
    with pytest.raises(AudioError, match="sample rate 1 Hz"):
        read_wav(write_float_wav(tmp_path / "one-hz.wav", np.zeros(100, np.float32), 1))
    with pytest.raises(AudioError, match="no audio samples"):
        read_wav(write_wav(tmp_path / "empty.wav", np.zeros(0, np.int16), 16000))


@pytest.mark.parametrize(
    ("rate", "chunk_ms", "chunk_len"), [(16000, 80, 1280), (44100, 80, 3528), (8000, 20, 160), (11025, 80, 882)]
)
def test_chunk_samples(rate, chunk_ms, chunk_len):
    assert chunk_samples(rate, chunk_ms) == chunk_len


def test_file_chunks_sizes():
    wav = WavAudio(bytes(16000 * 2), 16000, PCM16LE)  # 1 s = 12.5 chunks of 80 ms
    sizes = [len(c) for c in file_chunks(wav, 80, realtime=False)]
    assert sizes == [2560] * 12 + [1280]
    wav = WavAudio(bytes(44100 * 4), 44100, F32LE)
    sizes = [len(c) for c in file_chunks(wav, 100, realtime=False)]
    assert sizes == [4410 * 4] * 10
    assert b"".join(file_chunks(wav, 33, realtime=False)) == wav.data


class FakeTime:
    """A clock that advances only when someone waits, and a stop event recording the waits."""

    def __init__(self):
        self.now = 100.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    def stop_event(self, stop_after: int | None = None) -> threading.Event:
        fake = self

        class Stop(threading.Event):
            def wait(self, timeout=None):
                fake.waits.append(timeout)
                fake.now += timeout
                if stop_after is not None and len(fake.waits) >= stop_after:
                    self.set()
                return self.is_set()

        return Stop()


def test_file_chunks_realtime_pacing():
    t = FakeTime()
    wav = WavAudio(bytes(16000 * 2), 16000, PCM16LE)
    chunks = list(file_chunks(wav, 80, realtime=True, stop=t.stop_event(), clock=t.clock))
    assert len(chunks) == 13
    # Each chunk goes out when its last sample "has been recorded": 80 ms apart, the last one 40 ms later.
    assert t.waits == pytest.approx([0.08] * 12 + [0.04])
    assert t.now - 100.0 == pytest.approx(1.0)


def test_file_chunks_fast_does_not_wait():
    t = FakeTime()
    wav = WavAudio(bytes(16000 * 2), 16000, PCM16LE)
    assert len(list(file_chunks(wav, 80, realtime=False, stop=t.stop_event(), clock=t.clock))) == 13
    assert t.waits == []


def test_file_chunks_stop_ends_early():
    t = FakeTime()
    wav = WavAudio(bytes(16000 * 2), 16000, PCM16LE)
    chunks = list(file_chunks(wav, 80, realtime=True, stop=t.stop_event(stop_after=3), clock=t.clock))
    assert len(chunks) == 2  # the third wait saw the stop


# --------------------------------------------------------------------------------------------------------------
# Encoding chunks, events and their JSON
# --------------------------------------------------------------------------------------------------------------


def test_encode_chunk():
    i16 = np.array([0, 16384, -32768, 32767], np.int16)
    assert encode_chunk(i16, PCM16LE) == i16.astype("<i2").tobytes()
    np.testing.assert_allclose(np.frombuffer(encode_chunk(i16, F32LE), "<f4"), i16 / 32768.0)
    f = np.array([0.0, 0.5, -1.0, 2.0], np.float32)
    assert list(np.frombuffer(encode_chunk(f, PCM16LE), "<i2")) == [0, 16384, -32768, 32767]
    stereo = np.array([[0.2, 0.4], [-1.0, 0.0]], np.float32)
    np.testing.assert_allclose(np.frombuffer(encode_chunk(stereo, F32LE), "<f4"), [0.3, -0.5], rtol=1e-6)
    assert encode_chunk(b"\x01\x02\x03\x04", F32LE) == b"\x01\x02\x03\x04"
    with pytest.raises(ValueError, match="whole number of samples"):
        encode_chunk(b"\x01\x02\x03", PCM16LE)
    with pytest.raises(TypeError):
        encode_chunk("text", PCM16LE)


def _delta(text="hi", step=7, ids=(1, 2)):
    return pb.TranscribeResponse(
        delta=pb.TextDelta(text=text, start_s=0.08, end_s=0.16, step=step, token_ids=list(ids)),
        audio_processed_s=0.56,
    )


def test_event_json_formatting():
    delta = Event.from_response(_delta(" hello"))
    assert json.loads(format_event(delta)) == {
        "type": "delta", "text": " hello", "start_s": 0.08, "end_s": 0.16, "step": 7, "final": False,
        "audio_processed_s": 0.56,
    }
    assert json.loads(format_event(delta, token_ids=True))["token_ids"] == [1, 2]

    final = Event.from_response(pb.TranscribeResponse(
        final=pb.Final(reason=pb.FINAL_REASON_FLUSH, text="hello world", start_s=0.0, end_s=1.2345),
        audio_processed_s=1.2345,
    ))
    assert final.is_final and final.reason == "flush"
    assert json.loads(format_event(final, token_ids=True)) == {
        "type": "final", "text": "hello world", "start_s": 0.0, "end_s": 1.234, "reason": "flush", "final": True,
        "audio_processed_s": 1.234,
    }
    started = Event.from_response(pb.TranscribeResponse(started=pb.SessionStarted(session_id="s1")))
    assert json.loads(format_event(started)) == {
        "type": "started", "session_id": "s1", "final": False, "audio_processed_s": 0.0,
    }
    assert format_event(Event.from_response(_delta("é"))).count("é") == 1  # UTF-8 kept readable


def test_live_printer():
    import io

    out = io.StringIO()
    p = Printer(out)
    for r in [pb.TranscribeResponse(started=pb.SessionStarted(session_id="x")), _delta(" Hello"), _delta(","),
              _delta(" world"), pb.TranscribeResponse(final=pb.Final(reason=pb.FINAL_REASON_FLUSH)),
              _delta(" again"), pb.TranscribeResponse(final=pb.Final(reason=pb.FINAL_REASON_END_OF_AUDIO))]:
        p(Event.from_response(r))
    assert out.getvalue() == "Hello, world\nagain\n"


# --------------------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "one of the arguments --mic --file --describe --list-devices is required"),
        (["--mic", "--file", "x.wav"], "not allowed with argument"),
        (["--describe", "--ca-cert", "ca.pem"], "--ca-cert needs --tls"),
        (["--describe", "--server", "localhost:99999"], "the port must be 1..65535"),
        (["--mic", "--fast"], "--fast applies to --file only"),
        (["--file", "x.wav", "--device", "1"], "--device applies to --mic only"),
        (["--file", "x.wav", "--token-ids"], "--token-ids needs --json"),
        (["--file", "x.wav", "--chunk-ms", "0"], "must be > 0"),
        (["--file", "x.wav", "--temperature", "-1"], "must be >= 0"),
        (["--describe", "--offline"], "applies to --mic or --file only"),
        (["--describe", "--endpointing", "500"], "applies to --mic or --file only"),
        (["--mic", "--offline", "--endpointing", "500"], "--endpointing applies to streaming sessions"),
    ],
)
def test_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    assert main(["--file", str(tmp_path / "nope.wav"), "--server", f"127.0.0.1:{free_port()}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope.wav: file not found" in err


@pytest.mark.parametrize("what", ["--describe", "--file"])
def test_nothing_listening_is_a_clear_error(what, tmp_path, capsys):
    server = f"127.0.0.1:{free_port()}"
    wav = write_wav(tmp_path / "a.wav", np.zeros(160), 16000)
    argv = ["--describe"] if what == "--describe" else ["--file", str(wav)]
    start = time.monotonic()
    assert main([*argv, "--server", server, "--connect-timeout", "3"]) == 1
    assert time.monotonic() - start < 30
    err = capsys.readouterr().err
    assert err.startswith(f"error: UNAVAILABLE: cannot connect to {server}"), err


# --------------------------------------------------------------------------------------------------------------
# Microphone (no PortAudio, or no input device, on test machines)
# --------------------------------------------------------------------------------------------------------------


def _real_input_devices():
    try:
        return client_audio.input_devices()
    except client_audio.MicrophoneError as e:
        return e


@pytest.mark.parametrize("argv", [["--list-devices"], ["--mic"], ["--mic", "--device", "no-such-device"]])
def test_mic_missing_portaudio_or_device_is_a_clear_error(argv, capsys):
    found = _real_input_devices()
    if isinstance(found, list) and found:
        if "no-such-device" in argv:  # with real devices, an unknown one must still be a clear error
            assert main([*argv, "--server", f"127.0.0.1:{free_port()}"]) == 1
            err = capsys.readouterr().err
            assert err.startswith("error: ") and "no-such-device" in err and "Traceback" not in err
            return
        pytest.skip("this machine has an audio input device (covered with a fake sounddevice below)")
    # Never reaches the server: the microphone is checked before connecting.
    assert main([*argv, "--server", f"127.0.0.1:{free_port()}"] if argv[0] == "--mic" else argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    if isinstance(found, Exception):
        assert "PortAudio library not found" in err and "libportaudio2" in err
    else:
        assert "no audio input device" in err
    assert "Traceback" not in err


class FakeSoundDevice(types.ModuleType):
    """Just enough of sounddevice for device lookup."""

    def __init__(self, devices):
        super().__init__("sounddevice")
        self._devices = devices
        self.default = types.SimpleNamespace(device=[0 if devices else -1, -1])

    def query_devices(self):
        return self._devices

    def query_hostapis(self):
        return [{"name": "ALSA"}]

    def check_input_settings(self, **kw):
        raise ValueError("Invalid sample rate")  # -> the device's default rate


def test_mic_no_device_and_bad_device_with_fake_sounddevice(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sounddevice", FakeSoundDevice([]))
    assert main(["--list-devices"]) == 1
    assert "no audio input device found" in capsys.readouterr().err

    devices = [
        {"name": "USB Mic", "hostapi": 0, "max_input_channels": 1, "default_samplerate": 48000.0},
        {"name": "Speakers", "hostapi": 0, "max_input_channels": 0, "default_samplerate": 48000.0},
    ]
    monkeypatch.setitem(sys.modules, "sounddevice", FakeSoundDevice(devices))
    assert main(["--list-devices"]) == 0
    out = capsys.readouterr().out
    assert "USB Mic" in out and "Speakers" not in out and out.startswith("*   0")
    assert main(["--mic", "--device", "webcam", "--server", f"127.0.0.1:{free_port()}"]) == 1
    assert "no input device matching 'webcam'" in capsys.readouterr().err
    mic = client_audio.Microphone("usb")
    assert (mic.device.index, mic.sample_rate, mic.encoding) == (0, 48000, F32LE)


# --------------------------------------------------------------------------------------------------------------
# Against a fake server: the wire protocol
# --------------------------------------------------------------------------------------------------------------


class FakeRealtime(pb_grpc.RealtimeServicer):
    """One delta per audio message ("w<bytes>"), a Final per flush and at the end; records what it received."""

    def __init__(self, abort: tuple[grpc.StatusCode, str] | None = None):
        self.abort = abort
        self.sessions: list[dict] = []
        self.audio_seen = threading.Event()

    def Describe(self, request, context):
        return pb.ModelDescription(model="fake", backend="xnnpack", program=pb.PROGRAM_KIND_STREAMING,
                                   delay_ms=480, step_ms=80, encodings=[pb.AUDIO_ENCODING_PCM16LE],
                                   limits=pb.ServerLimits(max_sessions=2))

    def Transcribe(self, request_iterator, context):
        session = {"metadata": dict(context.invocation_metadata()), "requests": [], "half_closed": False}
        self.sessions.append(session)
        first = next(request_iterator)
        session["config"] = first.config
        if self.abort:
            context.abort(*self.abort)
        yield pb.TranscribeResponse(started=pb.SessionStarted(session_id="fake-1"))
        bytes_per_s = first.config.sample_rate_hz * (2 if first.config.encoding == pb.AUDIO_ENCODING_PCM16LE else 4)
        received, segment, step = 0, [], 0
        for r in request_iterator:
            kind = r.WhichOneof("request")
            session["requests"].append(kind if kind != "control" else pb.Control.Name(r.control))
            if kind == "audio":
                self.audio_seen.set()
                received += len(r.audio)
                text = f" w{len(r.audio)}"
                segment.append(text)
                yield pb.TranscribeResponse(
                    delta=pb.TextDelta(text=text, start_s=step * 0.08, end_s=(step + 1) * 0.08, step=step,
                                       token_ids=[1000 + step] if first.config.token_ids else []),
                    audio_processed_s=received / bytes_per_s)
                step += 1
            elif kind == "control":
                yield pb.TranscribeResponse(final=pb.Final(reason=pb.FINAL_REASON_FLUSH, text="".join(segment)),
                                            audio_processed_s=received / bytes_per_s)
                segment = []
        session["half_closed"] = True
        yield pb.TranscribeResponse(final=pb.Final(reason=pb.FINAL_REASON_END_OF_AUDIO, text="".join(segment)),
                                    audio_processed_s=received / bytes_per_s)


@pytest.fixture
def fake_server():
    servers = []

    def start(servicer: FakeRealtime) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_RealtimeServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for s in servers:
        s.stop(grace=None)


def test_client_transcribe_flush_and_metadata(fake_server):
    fake = FakeRealtime()
    address = fake_server(fake)
    chunks = [b"\x00\x00" * 1280, np.zeros(640, np.float32), FLUSH, b"\x00\x00" * 10]
    with RealtimeClient(address, token="s3cret") as client:
        client.wait_ready(5)
        events = list(client.transcribe(chunks, 16000, PCM16LE, token_ids=True, seed=3, max_new_tokens=9))
    assert [e.kind for e in events] == ["started", "delta", "delta", "final", "delta", "final"]
    assert [e.reason for e in events if e.is_final] == ["flush", "end_of_audio"]
    assert events[3].text == " w2560 w1280" and events[5].text == " w20"
    assert events[2].token_ids == (1001,) and events[2].step == 1
    session = fake.sessions[0]
    assert session["metadata"]["authorization"] == "Bearer s3cret"
    assert session["requests"] == ["audio", "audio", "CONTROL_FLUSH", "audio"] and session["half_closed"]
    config = session["config"]
    assert (config.encoding, config.sample_rate_hz) == (pb.AUDIO_ENCODING_PCM16LE, 16000)
    assert config.token_ids and config.HasField("seed") and config.seed == 3 and config.max_new_tokens == 9
    assert config.mode == pb.TRANSCRIPTION_MODE_STREAMING


def test_client_surfaces_audio_iterable_errors(fake_server):
    address = fake_server(FakeRealtime())

    def chunks():
        yield b"\x00\x00"
        raise RuntimeError("microphone unplugged")

    with RealtimeClient(address) as client:
        with pytest.raises(RuntimeError, match="microphone unplugged"):
            list(client.transcribe(chunks(), 16000))


def test_cli_file_json_and_text(fake_server, tmp_path, capsys):
    address = fake_server(FakeRealtime())
    path = write_wav(tmp_path / "a.wav", np.zeros(16000 // 5, np.int16), 16000)  # 200 ms: 2 chunks + 40 ms
    assert main(["--file", str(path), "--fast", "--server", address, "--json", "--token-ids"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [x["type"] for x in lines] == ["started", "delta", "delta", "delta", "final"]
    assert lines[1] == {"type": "delta", "text": " w2560", "start_s": 0.0, "end_s": 0.08, "step": 0,
                        "token_ids": [1000], "final": False, "audio_processed_s": 0.08}
    assert lines[-1]["final"] and lines[-1]["reason"] == "end_of_audio"

    assert main(["--file", str(path), "--fast", "--server", address]) == 0
    assert capsys.readouterr().out == "w2560 w2560 w1280\n"


def test_cli_server_error_status(fake_server, tmp_path, capsys):
    address = fake_server(FakeRealtime(abort=(grpc.StatusCode.INVALID_ARGUMENT, "sample_rate_hz 1 is out of range")))
    path = write_wav(tmp_path / "a.wav", np.zeros(1600, np.int16), 16000)
    assert main(["--file", str(path), "--fast", "--server", address]) == 1
    assert capsys.readouterr().err == "error: INVALID_ARGUMENT: sample_rate_hz 1 is out of range\n"
    with RealtimeClient(address) as client, pytest.raises(RealtimeError) as e:
        list(client.transcribe([b"\x00\x00"], 1))
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and e.value.message.startswith("sample_rate_hz 1")


def test_cli_describe(fake_server, capsys):
    address = fake_server(FakeRealtime())
    assert main(["--describe", "--server", address]) == 0
    out = capsys.readouterr().out
    assert "backend: xnnpack\n" in out and "program: streaming\n" in out and "limits.max_sessions: 2\n" in out
    assert "encodings: pcm16le\n" in out
    assert main(["--describe", "--server", address, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["delay_ms"] == 480 and d["limits"]["max_sessions"] == 2 and d["program"] == "PROGRAM_KIND_STREAMING"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_cli_ctrl_c_flushes_then_ends(fake_server, tmp_path):
    fake = FakeRealtime()
    address = fake_server(fake)
    path = write_wav(tmp_path / "long.wav", np.zeros(16000 * 30, np.int16), 16000)  # paced: would take 30 s
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxtral_client.cli", "--file", str(path), "--server", address, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )
    try:
        assert fake.audio_seen.wait(20), "the client sent no audio"
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["reason"] for e in events if e["final"]] == ["flush", "end_of_audio"]
    session = fake.sessions[0]
    assert session["requests"][-1] == "CONTROL_FLUSH" and session["half_closed"]
    assert 1 <= session["requests"].count("audio") < 100


def test_endpointing_sends_only_what_is_set():
    from voxtral_client.client import Endpointing

    message = Endpointing(silence_ms=700).message()
    assert message.HasField("silence_duration_ms") and message.silence_duration_ms == 700
    assert not message.HasField("threshold") and not message.HasField("prefix_padding_ms")
    zero = Endpointing(prefix_ms=0).message()  # 0 is a value here (no prefix), not "unset"
    assert zero.HasField("prefix_padding_ms") and zero.prefix_padding_ms == 0
