"""WAV files, read once for the client and the runtime: integer PCM of 8-32 bits, IEEE float, WAVE_FORMAT_EXTENSIBLE.

The stdlib `wave` module of Python 3.11 reads integer PCM only, so the RIFF chunks are walked here for every file:
one parser, one set of checks and one error type whichever side opens the file. The samples stay interleaved
little-endian bytes until `WavFile.samples()` decodes them, so the client can send 16-bit PCM unchanged.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Sample rates the server accepts (ModelDescription.min/max_sample_rate_hz); files outside are refused up front.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 4000, 384000

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
PCM_WIDTHS = (1, 2, 3, 4)  # bytes per integer sample
FLOAT_WIDTHS = (4, 8)  # bytes per float sample


class AudioError(ValueError):
    """Audio that cannot be read or is malformed."""


@dataclass(frozen=True)
class WavFile:
    """A WAV file's samples as stored: interleaved little-endian frames of `channels` samples."""

    data: bytes  # whole frames only
    sample_rate: int  # Hz
    channels: int
    sample_width: int  # bytes per sample
    is_float: bool

    def samples(self) -> np.ndarray:
        """float32 (frames, channels); integer PCM scaled to [-1, 1), float samples as stored."""
        data, width = self.data, self.sample_width
        if self.is_float:
            x = np.frombuffer(data, "<f4" if width == 4 else "<f8").astype(np.float32)
        elif width == 1:  # 8-bit WAV is unsigned
            x = (np.frombuffer(data, np.uint8).astype(np.float32) - 128.0) / 128.0
        elif width == 2:
            x = np.frombuffer(data, "<i2").astype(np.float32) / 2.0**15
        elif width == 3:  # the 3 bytes go to the top of an int32, keeping the sign
            raw = np.frombuffer(data, np.uint8).reshape(-1, 3)
            padded = np.zeros((raw.shape[0], 4), np.uint8)
            padded[:, 1:] = raw
            x = (padded.view("<i4").reshape(-1).astype(np.float64) / 2.0**31).astype(np.float32)
        else:
            x = (np.frombuffer(data, "<i4").astype(np.float64) / 2.0**31).astype(np.float32)
        return x.reshape(-1, self.channels)


def _chunks(blob: bytes) -> dict[bytes, bytes]:
    """The first 'fmt ' and 'data' chunks of a RIFF/WAVE file."""
    found: dict[bytes, bytes] = {}
    pos = 12
    while pos + 8 <= len(blob) and len(found) < 2:
        chunk_id, size = blob[pos:pos + 4], struct.unpack_from("<I", blob, pos + 4)[0]
        if chunk_id in (b"fmt ", b"data") and chunk_id not in found:
            found[chunk_id] = blob[pos + 8:pos + 8 + size]  # a streamed writer may leave the size too large
        pos += 8 + size + (size & 1)  # chunks are padded to an even size
    return found


def open_wav(path: str | Path) -> WavFile:
    """Reads and checks a WAV file; every problem is an AudioError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    blob = path.read_bytes()
    if len(blob) < 12 or blob[:4] != b"RIFF" or blob[8:12] != b"WAVE":
        raise AudioError(f"{path}: not a RIFF/WAVE file")
    chunks = _chunks(blob)
    fmt = chunks.get(b"fmt ")
    if fmt is None or len(fmt) < 16:
        raise AudioError(f"{path}: missing or short 'fmt ' chunk")
    if b"data" not in chunks:
        raise AudioError(f"{path}: missing 'data' chunk")
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == WAVE_FORMAT_EXTENSIBLE:
        if len(fmt) < 40:
            raise AudioError(f"{path}: WAVE_FORMAT_EXTENSIBLE 'fmt ' chunk is too short")
        tag = struct.unpack_from("<H", fmt, 24)[0]  # first two bytes of the SubFormat GUID
    if tag not in (WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT):
        raise AudioError(f"{path}: unsupported WAV format tag 0x{tag:04x} (only PCM and IEEE float are read; "
                         f"convert it, e.g. `ffmpeg -i IN -c:a pcm_s16le OUT.wav`)")
    is_float = tag == WAVE_FORMAT_IEEE_FLOAT
    widths = FLOAT_WIDTHS if is_float else PCM_WIDTHS
    if channels < 1 or bits % 8 or bits // 8 not in widths:
        kind = "float" if is_float else "PCM"
        raise AudioError(f"{path}: unsupported format ({channels} channels of {bits}-bit {kind}; "
                         f"{kind} samples of {', '.join(str(8 * w) for w in widths)} bits are read)")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"{path}: sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
    frame = bits // 8 * channels
    data = chunks[b"data"]
    data = data[: len(data) - len(data) % frame]  # drop a trailing partial frame
    if not data:
        raise AudioError(f"{path}: no audio samples")
    return WavFile(data, rate, channels, bits // 8, is_float)
