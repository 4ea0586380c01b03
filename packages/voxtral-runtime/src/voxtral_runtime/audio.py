"""Audio in: WAV files and raw PCM bytes to float32 mono at the model's 16 kHz.

The model hears 16 kHz mono float32 (reference.md §5). Users bring WAVs at any rate, in integer or float formats,
and gRPC clients send PCM16LE or F32LE chunks of any size at any rate, so this module reads and checks all of those
and resamples with soxr (high quality, and with a streaming mode whose chunked output equals its one-shot output).
The stdlib `wave` module reads integer PCM only; float and WAVE_FORMAT_EXTENSIBLE files are parsed here directly.
"""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import soxr
from voxtral_client.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

SAMPLE_RATE = 16000
RESAMPLE_QUALITY = "HQ"

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
INT16_SCALE = 32768.0
# Float samples are nominally in [-1, 1]. Values a little beyond (a float WAV's overs, a resampler's ringing) are
# clipped to it; values beyond MAX_FLOAT_MAGNITUDE are refused: no real recording is 18 dB over full scale, so they
# are integer samples sent as floats, or garbage, and they would overflow the model's log-mel to infinity.
MAX_FLOAT_MAGNITUDE = 8.0


class AudioError(ValueError):
    """Audio that cannot be read or is malformed."""


def _decode_samples(data: bytes, sample_width: int, channels: int, is_float: bool, where: str) -> np.ndarray:
    """Interleaved little-endian samples -> float32 (frames, channels) in [-1, 1]."""
    frame_bytes = sample_width * channels
    data = data[: len(data) - len(data) % frame_bytes]  # drop a trailing partial frame
    if is_float:
        if sample_width not in (4, 8):
            raise AudioError(f"{where}: unsupported float sample width {8 * sample_width} bits")
        x = np.frombuffer(data, "<f4" if sample_width == 4 else "<f8")
        x = check_float_range(x, where, clip=False)
    elif sample_width == 1:  # 8-bit WAV is unsigned
        x = (np.frombuffer(data, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif sample_width == 2:
        x = np.frombuffer(data, "<i2").astype(np.float32) / 2.0**15
    elif sample_width == 3:  # place the 3 bytes in the top of an int32, keeping the sign
        raw = np.frombuffer(data, np.uint8).reshape(-1, 3)
        padded = np.zeros((raw.shape[0], 4), np.uint8)
        padded[:, 1:] = raw
        x = padded.view("<i4").reshape(-1).astype(np.float32) / 2.0**31
    elif sample_width == 4:
        x = (np.frombuffer(data, "<i4").astype(np.float64) / 2.0**31).astype(np.float32)
    else:
        raise AudioError(f"{where}: unsupported PCM sample width {8 * sample_width} bits")
    return x.reshape(-1, channels)


def _read_with_wave(path: Path) -> tuple[np.ndarray, int]:
    """Integer PCM WAV via the stdlib; raises wave.Error for formats it does not know."""
    with wave.open(str(path), "rb") as w:
        channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
        data = w.readframes(w.getnframes())
    return _decode_samples(data, width, channels, False, str(path)), rate


def _read_riff(path: Path) -> tuple[np.ndarray, int]:
    """Any PCM/float WAV, including WAVE_FORMAT_EXTENSIBLE, by walking the RIFF chunks."""
    where = str(path)
    blob = path.read_bytes()
    fmt, data, pos = None, None, 12
    while pos + 8 <= len(blob) and (fmt is None or data is None):
        chunk_id, size = blob[pos:pos + 4], struct.unpack_from("<I", blob, pos + 4)[0]
        body = blob[pos + 8:pos + 8 + size]  # a streamed writer may leave the size too large: take what is there
        if chunk_id == b"fmt ":
            fmt = body
        elif chunk_id == b"data":
            data = body
        pos += 8 + size + (size & 1)  # chunks are padded to an even size
    if fmt is None or len(fmt) < 16:
        raise AudioError(f"{where}: missing or short 'fmt ' chunk")
    if data is None:
        raise AudioError(f"{where}: missing 'data' chunk")
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == WAVE_FORMAT_EXTENSIBLE:
        if len(fmt) < 40:
            raise AudioError(f"{where}: WAVE_FORMAT_EXTENSIBLE 'fmt ' chunk is too short")
        tag = struct.unpack_from("<H", fmt, 24)[0]  # first two bytes of the SubFormat GUID
    if tag not in (WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT):
        raise AudioError(f"{where}: unsupported WAV format tag 0x{tag:04x} (only PCM and IEEE float are read)")
    if channels < 1 or rate < 1 or bits % 8 or bits == 0:
        raise AudioError(f"{where}: invalid format ({channels} channels, {rate} Hz, {bits} bits)")
    return _decode_samples(data, bits // 8, channels, tag == WAVE_FORMAT_IEEE_FLOAT, where), rate


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """WAV file -> (float32 samples of shape (frames, channels), sample rate)."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    with open(path, "rb") as f:
        header = f.read(12)
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        raise AudioError(f"{path}: not a RIFF/WAVE file")
    try:
        samples, rate = _read_with_wave(path)
    except (wave.Error, EOFError):  # float or extensible formats, or a layout the stdlib rejects
        samples, rate = _read_riff(path)
    if samples.shape[0] == 0:
        raise AudioError(f"{path}: no audio samples")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"{path}: sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
    return samples, rate


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(frames, channels) -> (frames,) by averaging channels; 1-D input is returned as float32."""
    samples = np.asarray(samples, dtype=np.float32)
    return samples if samples.ndim == 1 else samples.mean(axis=1, dtype=np.float32)


def resample(x: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resamples a whole signal ((frames,) or (frames, channels)) with soxr; float32 out."""
    x = np.asarray(x, dtype=np.float32)
    if from_rate <= 0 or to_rate <= 0:
        raise AudioError(f"sample rates must be positive (got {from_rate} -> {to_rate})")
    if from_rate == to_rate:
        return x
    return soxr.resample(x, from_rate, to_rate, quality=RESAMPLE_QUALITY).astype(np.float32, copy=False)


def load_audio(path: str | Path, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """WAV file -> float32 mono at `target_rate`."""
    samples, rate = read_wav(path)
    return resample(to_mono(samples), rate, target_rate)


class StreamResampler:
    """Resamples a mono stream fed in chunks of any size; chunked output equals one-shot output."""

    def __init__(self, from_rate: int, to_rate: int):
        if from_rate <= 0 or to_rate <= 0:
            raise AudioError(f"sample rates must be positive (got {from_rate} -> {to_rate})")
        self.from_rate, self.to_rate = from_rate, to_rate
        self._stream = self._new_stream()

    def _new_stream(self):
        if self.from_rate == self.to_rate:
            return None
        return soxr.ResampleStream(self.from_rate, self.to_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY)

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Output samples that are ready after this chunk (may be fewer than the rate ratio suggests)."""
        chunk = np.ascontiguousarray(chunk, dtype=np.float32)
        if chunk.ndim != 1:
            raise AudioError(f"expected a 1-D mono chunk, got shape {chunk.shape}")
        if self._stream is None:
            return chunk
        return self._stream.resample_chunk(chunk)

    def flush(self) -> np.ndarray:
        """The samples still held in the filter (end of stream); the resampler is then ready for a new stream."""
        if self._stream is None:
            return np.zeros(0, np.float32)
        tail = self._stream.resample_chunk(np.zeros(0, np.float32), last=True)
        self._stream = self._new_stream()
        return tail


def decode_pcm16le(data: bytes) -> np.ndarray:
    """Raw signed 16-bit little-endian mono PCM -> float32 in [-1, 1)."""
    if len(data) % 2:
        raise AudioError(f"PCM16LE audio must have an even number of bytes, got {len(data)}")
    return np.frombuffer(data, "<i2").astype(np.float32) / INT16_SCALE


def check_float_range(x: np.ndarray, what: str, clip: bool = True) -> np.ndarray:
    """Float samples -> float32 (clipped to [-1, 1] if `clip`); refuses NaN, infinity and magnitudes over
    MAX_FLOAT_MAGNITUDE. Files keep their values (channels are mixed before the session clips)."""
    x = np.asarray(x, dtype=np.float32)
    if not len(x):
        return x
    peak = float(np.max(np.abs(x)))  # NaN propagates through max
    if not np.isfinite(peak):
        raise AudioError(f"{what} contains NaN or infinite samples")
    if peak > MAX_FLOAT_MAGNITUDE:
        raise AudioError(f"{what} has a sample of magnitude {peak:.3g}: float samples must lie in [-1, 1] (up to "
                         f"{MAX_FLOAT_MAGNITUDE:g} is clipped); scale integer samples by 1/32768 or send PCM16LE")
    return np.clip(x, -1.0, 1.0) if clip and peak > 1.0 else x


def decode_f32le(data: bytes) -> np.ndarray:
    """Raw 32-bit float little-endian mono samples -> float32 in [-1, 1] (see check_float_range)."""
    if len(data) % 4:
        raise AudioError(f"F32LE audio must have a multiple of 4 bytes, got {len(data)}")
    return check_float_range(np.frombuffer(data, "<f4"), "F32LE audio")


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Writes float samples ((frames,) or (frames, channels)) as 16-bit PCM WAV, clipping to [-1, 1)."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise AudioError(f"expected samples of shape (frames,) or (frames, channels), got {x.shape}")
    pcm = np.clip(np.round(x * INT16_SCALE), -INT16_SCALE, INT16_SCALE - 1).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x.shape[1])
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
