"""Audio in: WAV files and raw PCM bytes to float32 mono at the model's 16 kHz.

The model hears 16 kHz mono float32 (docs/spec.md §5). Users bring WAVs at any rate, in integer or float formats,
and gRPC clients send PCM16LE or F32LE chunks of any size at any rate, so this module reads and checks all of those
and resamples with soxr (high quality, and with a streaming mode whose chunked output equals its one-shot output).
WAV files are parsed by the client's `voxtral_client.wav` (one reader for both packages; AudioError is its
error type, so a bad file reads the same on either side).
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import soxr
from voxtral_client.wav import AudioError, open_wav

SAMPLE_RATE = 16000
RESAMPLE_QUALITY = "HQ"

INT16_SCALE = 32768.0
# Float samples are nominally in [-1, 1]. Values a little beyond (a float WAV's overs, a resampler's ringing) are
# clipped to it; values beyond MAX_FLOAT_MAGNITUDE are refused: no real recording is 18 dB over full scale, so they
# are integer samples sent as floats, or garbage, and they would overflow the model's log-mel to infinity.
MAX_FLOAT_MAGNITUDE = 8.0


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """WAV file -> (float32 samples of shape (frames, channels), sample rate); float samples range-checked."""
    wav = open_wav(path)
    samples = wav.samples()
    if wav.is_float:
        samples = check_float_range(samples, str(path), clip=False)
    return samples, wav.sample_rate


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
