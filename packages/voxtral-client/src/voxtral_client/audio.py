"""Audio for the client: WAV files and the microphone as chunks of little-endian bytes, ready to send.

The client does no resampling (the server resamples to the model's 16 kHz): a WAV file (read by `wav.py`, the
reader the runtime shares) is sent at its own sample rate, downmixed to mono. 16-bit PCM files are sent as PCM16LE
unchanged; every other format as F32LE. The microphone is captured at 16 kHz mono float32 when the device allows
it (otherwise at its default rate).

`sounddevice` needs the PortAudio C library, so it is imported only when the microphone is used.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .wav import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, AudioError, open_wav  # noqa: F401  (re-exported)

PCM16LE = "pcm16le"
F32LE = "f32le"
SAMPLE_BYTES = {PCM16LE: 2, F32LE: 4}

MIC_SAMPLE_RATE = 16000  # the model's rate: nothing to resample on the server
DEFAULT_CHUNK_MS = 80  # one model step

PORTAUDIO_HINT = (
    "PortAudio library not found (the microphone needs it): install it, e.g. `sudo apt install libportaudio2` "
    "on Debian/Ubuntu or `brew install portaudio` on macOS"
)


class MicrophoneError(RuntimeError):
    """No usable microphone: PortAudio missing, no input device, or the device failed."""


# --------------------------------------------------------------------------------------------------------------
# WAV files
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WavAudio:
    """Mono audio as the bytes to send."""

    data: bytes  # little-endian mono samples in `encoding`
    sample_rate: int  # Hz, the file's own rate
    encoding: str  # PCM16LE or F32LE

    @property
    def num_samples(self) -> int:
        return len(self.data) // SAMPLE_BYTES[self.encoding]

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sample_rate


def read_wav(path: str | Path) -> WavAudio:
    """Read a WAV file as mono bytes at its own sample rate: 16-bit PCM as PCM16LE, anything else as F32LE."""
    wav = open_wav(path)
    if wav.sample_width == 2 and not wav.is_float:
        frames = np.frombuffer(wav.data, "<i2").reshape(-1, wav.channels)
        mono = frames[:, 0] if wav.channels == 1 else np.round(frames.mean(axis=1)).astype("<i2")
        return WavAudio(mono.tobytes(), wav.sample_rate, PCM16LE)
    mono = wav.samples().mean(axis=1, dtype=np.float32)
    return WavAudio(mono.astype("<f4").tobytes(), wav.sample_rate, F32LE)


def chunk_samples(sample_rate: int, chunk_ms: float) -> int:
    """Samples in one chunk of chunk_ms at sample_rate (at least 1)."""
    if chunk_ms <= 0:
        raise ValueError(f"chunk_ms must be > 0, got {chunk_ms}")
    return max(1, round(sample_rate * chunk_ms / 1000))


def file_chunks(
    audio: WavAudio,
    chunk_ms: float = DEFAULT_CHUNK_MS,
    realtime: bool = True,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[bytes]:
    """Yield the audio in chunks of chunk_ms (the last one shorter).

    realtime: pace like a microphone, yielding each chunk once its last sample "has been recorded" (chunk i at
    start + end_of_chunk_i seconds); otherwise as fast as the consumer takes them. `stop` ends the iteration early
    (checked while waiting and between chunks); `clock` is for tests.
    """
    stop = stop or threading.Event()
    step = chunk_samples(audio.sample_rate, chunk_ms) * SAMPLE_BYTES[audio.encoding]
    sample_bytes = SAMPLE_BYTES[audio.encoding]
    start = clock()
    for offset in range(0, len(audio.data), step):
        chunk = audio.data[offset : offset + step]
        if realtime:
            due = start + (offset + len(chunk)) / sample_bytes / audio.sample_rate
            delay = due - clock()
            if delay > 0 and stop.wait(delay):
                return
        if stop.is_set():
            return
        yield chunk


# --------------------------------------------------------------------------------------------------------------
# Microphone
# --------------------------------------------------------------------------------------------------------------


def import_sounddevice():
    """The sounddevice module, or a MicrophoneError saying what is missing."""
    try:
        import sounddevice
    except OSError as e:  # sounddevice raises OSError when the PortAudio shared library is absent
        raise MicrophoneError(PORTAUDIO_HINT) from e
    except ImportError as e:
        raise MicrophoneError("the sounddevice package is not installed (pip install sounddevice)") from e
    return sounddevice


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    hostapi: str
    channels: int  # max input channels
    default_sample_rate: float
    is_default: bool


def input_devices() -> list[InputDevice]:
    """The audio input devices PortAudio knows (possibly none)."""
    sd = import_sounddevice()
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
        default_in = sd.default.device[0]
    except Exception as e:  # PortAudioError when the audio system itself is broken
        raise MicrophoneError(f"cannot list audio devices: {e}") from e
    result = []
    for index, d in enumerate(devices):
        if d["max_input_channels"] < 1:
            continue
        api = hostapis[d["hostapi"]]["name"] if 0 <= d["hostapi"] < len(hostapis) else "?"
        result.append(
            InputDevice(index, d["name"], api, int(d["max_input_channels"]), float(d["default_samplerate"]),
                        index == default_in)
        )
    return result


NO_DEVICE_MESSAGE = "no audio input device found (PortAudio lists none): connect a microphone or check the audio setup"


def find_input_device(device: str | int | None = None) -> InputDevice:
    """Resolve --device: None (the default input), an index, or a case-insensitive part of a device name."""
    devices = input_devices()
    if not devices:
        raise MicrophoneError(NO_DEVICE_MESSAGE)
    if device is None or device == "":
        return next((d for d in devices if d.is_default), devices[0])
    if isinstance(device, int) or str(device).strip().isdigit():
        index = int(device)
        for d in devices:
            if d.index == index:
                return d
        raise MicrophoneError(f"no input device with index {index} (see --list-devices)")
    matches = [d for d in devices if str(device).lower() in d.name.lower()]
    if not matches:
        raise MicrophoneError(f"no input device matching {device!r} (see --list-devices)")
    if len(matches) > 1:
        names = ", ".join(f"{d.index}: {d.name}" for d in matches)
        raise MicrophoneError(f"{device!r} matches several input devices ({names}); pass an index")
    return matches[0]


class Microphone:
    """Mono float32 capture into a queue of F32LE chunks of chunk_ms.

        with Microphone(device=None) as mic:
            for chunk in mic.chunks(stop): ...

    Opens at 16 kHz when the device accepts it, else at the device's default rate (see `sample_rate`).
    """

    encoding = F32LE

    def __init__(self, device: str | int | None = None, chunk_ms: float = DEFAULT_CHUNK_MS):
        self._sd = import_sounddevice()
        self.device = find_input_device(device)
        self.sample_rate = self._pick_rate()
        self.blocksize = chunk_samples(self.sample_rate, chunk_ms)
        self.overflows = 0
        self._queue: queue.Queue[bytes] = queue.Queue()
        self._stream = None
        self._lock = threading.Lock()  # close() runs from the gRPC thread (end of chunks) and the caller

    def _pick_rate(self) -> int:
        try:
            self._sd.check_input_settings(device=self.device.index, channels=1, dtype="float32",
                                          samplerate=MIC_SAMPLE_RATE)
            return MIC_SAMPLE_RATE
        except Exception:  # the server resamples whatever rate the device gives
            return int(round(self.device.default_sample_rate))

    def _callback(self, indata, frames, time_info, status) -> None:
        if status.input_overflow:
            self.overflows += 1
        self._queue.put(np.ascontiguousarray(indata[:, 0], dtype="<f4").tobytes())

    def start(self) -> None:
        with self._lock:
            if self._stream is not None:
                return
            try:
                self._stream = self._sd.InputStream(
                    device=self.device.index, samplerate=self.sample_rate, channels=1, dtype="float32",
                    blocksize=self.blocksize, callback=self._callback,
                )
                self._stream.start()
            except Exception as e:
                self._stream = None
                name = f"{self.device.index} ({self.device.name})"
                raise MicrophoneError(f"cannot open input device {name}: {e}") from e

    def chunks(self, stop: threading.Event | None = None) -> Iterator[bytes]:
        """Captured chunks as they arrive, until `stop` is set (then what is already captured, and the end)."""
        stop = stop or threading.Event()
        self.start()
        while not stop.is_set():
            try:
                yield self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
        self.close()  # stop capturing, then hand over what was captured before the stop
        while True:
            try:
                yield self._queue.get_nowait()
            except queue.Empty:
                return

    def close(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.stop()
            finally:
                stream.close()

    def __enter__(self) -> Microphone:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
