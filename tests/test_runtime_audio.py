"""Audio input: WAV formats (integer, float, extensible), resampling whole and streamed, raw PCM decoding."""

from __future__ import annotations

import struct
import wave

import numpy as np
import pytest

from voxtral_runtime.audio import (
    AudioError,
    StreamResampler,
    decode_f32le,
    decode_pcm16le,
    load_audio,
    read_wav,
    resample,
    to_mono,
    write_wav,
)

KSDATAFORMAT_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"  # GUID after the 2-byte format tag


def _sine(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _write_riff(path, tag: int, channels: int, rate: int, bits: int, data: bytes, extensible: bool = False):
    """A WAV written by hand: plain or WAVE_FORMAT_EXTENSIBLE 'fmt ', an extra chunk, then 'data'."""
    block = channels * bits // 8
    if extensible:
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * block, block, bits, 22, bits, 0)
        fmt += struct.pack("<H", tag) + KSDATAFORMAT_TAIL
    else:
        fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    chunks += b"LIST" + struct.pack("<I", 3) + b"abc\x00"  # odd-sized chunk with its pad byte
    chunks += b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)


def _pcm24(x: np.ndarray) -> bytes:
    ints = np.clip(np.round(x * 2**23), -2**23, 2**23 - 1).astype("<i4")
    return ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_wav_roundtrip_rates(tmp_path, rate):
    x = _sine(440, rate, 0.25)
    write_wav(tmp_path / "a.wav", x, rate)
    samples, got_rate = read_wav(tmp_path / "a.wav")
    assert got_rate == rate
    assert samples.dtype == np.float32 and samples.shape == (len(x), 1)
    np.testing.assert_allclose(samples[:, 0], x, atol=1 / 32768)


def test_stereo_wav_and_mono_mix(tmp_path):
    left, right = _sine(300, 16000, 0.1), _sine(700, 16000, 0.1, amp=0.25)
    write_wav(tmp_path / "s.wav", np.stack([left, right], axis=1), 16000)
    samples, _ = read_wav(tmp_path / "s.wav")
    assert samples.shape == (len(left), 2)
    np.testing.assert_allclose(samples[:, 1], right, atol=1 / 32768)
    np.testing.assert_allclose(to_mono(samples), (left + right) / 2, atol=1 / 32768)
    assert to_mono(left).shape == left.shape


def test_24bit_wav(tmp_path):
    x = _sine(1000, 22050, 0.1, amp=0.9)
    x[:3] = [-1.0, 0.999999, -0.5]
    with wave.open(str(tmp_path / "p24.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(3)
        w.setframerate(22050)
        w.writeframes(_pcm24(x))
    samples, rate = read_wav(tmp_path / "p24.wav")
    assert rate == 22050
    np.testing.assert_allclose(samples[:, 0], x, atol=2**-23)
    assert samples[0, 0] == -1.0


def test_8bit_and_32bit_pcm_wav(tmp_path):
    x = _sine(500, 8000, 0.1, amp=0.8)
    for width, data, tol in [(1, (np.round(x * 128) + 128).clip(0, 255).astype(np.uint8).tobytes(), 1 / 128),
                             (4, np.round(x * 2**31).astype("<i4").tobytes(), 1e-6)]:
        path = tmp_path / f"p{width}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(width)
            w.setframerate(8000)
            w.writeframes(data)
        samples, _ = read_wav(path)
        np.testing.assert_allclose(samples[:, 0], x, atol=tol)


def test_float32_wav(tmp_path):
    x = np.stack([_sine(440, 48000, 0.1), _sine(880, 48000, 0.1, amp=1.5)], axis=1)  # float WAVs may exceed 1
    _write_riff(tmp_path / "f.wav", 3, 2, 48000, 32, x.astype("<f4").tobytes())
    with pytest.raises(wave.Error):  # the stdlib cannot read it; our RIFF parser must
        wave.open(str(tmp_path / "f.wav"))
    samples, rate = read_wav(tmp_path / "f.wav")
    assert rate == 48000 and samples.shape == x.shape
    np.testing.assert_array_equal(samples, x)  # kept as they are: the session clips after the channels are mixed


@pytest.mark.parametrize("value, message", [(1e20, r"magnitude 1e\+20"), (np.nan, "NaN"), (np.inf, "infinite")])
def test_float_samples_out_of_range_are_refused(tmp_path, value, message):
    x = np.array([0.1, value, 0.2], dtype="<f4")
    _write_riff(tmp_path / "f.wav", 3, 1, 16000, 32, x.tobytes())
    with pytest.raises(AudioError, match=message):
        read_wav(tmp_path / "f.wav")
    with pytest.raises(AudioError, match=message):
        decode_f32le(x.tobytes())


def test_f32le_chunks_are_clipped_to_full_scale():
    x = np.array([0.5, -1.5, 7.9, -8.0], dtype="<f4")
    np.testing.assert_array_equal(decode_f32le(x.tobytes()), [0.5, -1.0, 1.0, -1.0])


@pytest.mark.parametrize("tag, bits", [(3, 32), (1, 24), (1, 16)])
def test_extensible_wav(tmp_path, tag, bits):
    x = _sine(600, 16000, 0.1)
    data = {32: x.astype("<f4").tobytes(), 24: _pcm24(x), 16: np.round(x * 32768).astype("<i2").tobytes()}[bits]
    _write_riff(tmp_path / "e.wav", tag, 1, 16000, bits, data, extensible=True)
    samples, rate = read_wav(tmp_path / "e.wav")
    assert rate == 16000
    np.testing.assert_allclose(samples[:, 0], x, atol=1 / 32768)


def test_wav_errors(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        read_wav(tmp_path / "missing.wav")
    (tmp_path / "text.wav").write_text("hello, this is not audio")
    with pytest.raises(AudioError, match="not a RIFF/WAVE"):
        read_wav(tmp_path / "text.wav")
    _write_riff(tmp_path / "mp3.wav", 0x0055, 1, 16000, 16, b"\x00" * 64)
    with pytest.raises(AudioError, match="unsupported WAV format tag 0x0055"):
        read_wav(tmp_path / "mp3.wav")
    write_wav(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="no audio samples"):
        read_wav(tmp_path / "empty.wav")
    _write_riff(tmp_path / "fempty.wav", 3, 1, 16000, 32, b"")
    with pytest.raises(AudioError, match="no audio samples"):
        read_wav(tmp_path / "fempty.wav")


@pytest.mark.parametrize("tag, bits, message", [(3, 0, "0-bit float"), (3, 16, "16-bit float"), (1, 40, "40-bit PCM"),
                                                (1, 12, "12-bit PCM")])
def test_odd_sample_widths_are_refused_by_both_readers(tmp_path, tag, bits, message):
    """One reader (voxtral_client.wav) behind the runtime and the client: the same file, the same clear error."""
    from voxtral_client.audio import read_wav as client_read_wav

    _write_riff(tmp_path / "odd.wav", tag, 1, 16000, bits, b"\x00" * 64)
    for reader in (read_wav, client_read_wav):
        with pytest.raises(AudioError, match=f"odd.wav: unsupported format .*{message}"):
            reader(tmp_path / "odd.wav")


def test_the_client_and_the_runtime_read_a_wav_to_the_same_samples(tmp_path):
    from voxtral_client.audio import read_wav as client_read_wav

    x = (_sine(300, 22050, 0.2)[:, None] * np.array([[1.0, 0.5]])).astype("<f4")
    _write_riff(tmp_path / "s.wav", 3, 2, 22050, 32, x.tobytes(), extensible=True)
    samples, rate = read_wav(tmp_path / "s.wav")
    sent = client_read_wav(tmp_path / "s.wav")
    assert rate == sent.sample_rate == 22050
    np.testing.assert_array_equal(np.frombuffer(sent.data, "<f4"), to_mono(samples))


def test_write_wav_clips(tmp_path):
    write_wav(tmp_path / "c.wav", np.array([2.0, -2.0, 0.5], np.float32), 16000)
    samples, _ = read_wav(tmp_path / "c.wav")
    np.testing.assert_allclose(samples[:, 0], [32767 / 32768, -1.0, 0.5])


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def test_resample_keeps_frequency_and_length():
    x = _sine(1000, 44100, 1.0)
    y = resample(x, 44100, 16000)
    assert y.dtype == np.float32
    assert abs(len(y) - 16000) <= 160
    assert abs(_peak_hz(y, 16000) - 1000) <= 2  # bin width is 1 Hz for one second
    assert 0.3 < np.abs(y[1000:-1000]).max() < 0.6  # amplitude preserved away from the edges
    np.testing.assert_array_equal(resample(x, 44100, 44100), x)  # identity when rates match


def test_load_audio_mixes_and_resamples(tmp_path):
    stereo = np.stack([_sine(1000, 48000, 0.5), _sine(1000, 48000, 0.5)], axis=1)
    write_wav(tmp_path / "st.wav", stereo, 48000)
    y = load_audio(tmp_path / "st.wav")
    assert y.ndim == 1 and y.dtype == np.float32 and abs(len(y) - 8000) <= 80
    assert abs(_peak_hz(y, 16000) - 1000) <= 4


@pytest.mark.parametrize("from_rate, to_rate", [(44100, 16000), (8000, 16000), (48000, 16000)])
def test_stream_resampler_chunked_equals_one_shot(from_rate, to_rate):
    rng = np.random.default_rng(1)
    x = (0.3 * rng.standard_normal(from_rate // 2)).astype(np.float32)
    one = StreamResampler(from_rate, to_rate)
    expected = np.concatenate([one.process(x), one.flush()])
    chunked = StreamResampler(from_rate, to_rate)
    outputs, pos = [], 0
    while pos < len(x):
        n = int(rng.choice([0, 1, 7, 160, 1280, 3001]))
        outputs.append(chunked.process(x[pos:pos + n]))
        pos += n
    outputs.append(chunked.flush())
    got = np.concatenate(outputs)
    assert abs(len(expected) - len(x) * to_rate / from_rate) <= 2
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # After flush the resampler starts a fresh stream with the same result.
    again = np.concatenate([chunked.process(x), chunked.flush()])
    np.testing.assert_allclose(again, expected, atol=1e-6)


def test_stream_resampler_identity_and_shape_check():
    r = StreamResampler(16000, 16000)
    x = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(r.process(x), x)
    assert r.flush().size == 0
    with pytest.raises(AudioError, match="1-D"):
        StreamResampler(44100, 16000).process(np.zeros((4, 2), np.float32))


def test_decode_pcm16le():
    data = np.array([0, 16384, -32768, 32767], "<i2").tobytes()
    np.testing.assert_array_equal(decode_pcm16le(data), [0.0, 0.5, -1.0, 32767 / 32768])
    assert decode_pcm16le(b"").size == 0
    with pytest.raises(AudioError, match="even number of bytes"):
        decode_pcm16le(data + b"\x01")


def test_decode_f32le():
    x = np.array([0.25, -1.0, 0.5], "<f4")
    np.testing.assert_array_equal(decode_f32le(x.tobytes()), x)
    with pytest.raises(AudioError, match="multiple of 4"):
        decode_f32le(x.tobytes()[:-1])
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(AudioError, match="NaN or infinite"):
            decode_f32le(np.array([0.0, bad], "<f4").tobytes())


def test_a_wav_at_an_absurd_rate_is_refused(tmp_path):
    """100 samples at 1 Hz would be 100 s of audio."""
    _write_riff(tmp_path / "slow.wav", 3, 1, 1, 32, np.zeros(100, "<f4").tobytes())
    with pytest.raises(AudioError, match="sample rate 1 Hz is outside 4000..384000"):
        read_wav(tmp_path / "slow.wav")
