"""`voxtral-runtime transcribe` end to end: WAV at another rate and in stereo, stdin microphone audio, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from signals import speechlike
from voxtral_runtime.audio import load_audio, write_wav
from voxtral_runtime.engine import Engine
from voxtral_runtime.bundle import BundlePaths
from voxtral_runtime.session import TextPiece

pytestmark = pytest.mark.slow


def transcribe(*args: str, stdin: bytes | None = None):
    return subprocess.run([sys.executable, "-m", "voxtral_runtime.cli", "transcribe", *args], input=stdin,
                          capture_output=True)


def local_text(bundle, audio: np.ndarray) -> str:
    session = Engine(BundlePaths.resolve(bundle)).session()
    return "".join(e.text for e in session.feed(audio) + session.finish() if isinstance(e, TextPiece))


def test_stereo_44k_wav_is_downmixed_and_resampled(bundles, tmp_path):
    bundle = bundles("xnnpack-stream")
    mono = speechlike(3.0, seed=60).numpy()
    t44 = np.arange(int(3.0 * 44100)) / 44100
    left = np.interp(t44, np.arange(len(mono)) / 16000, mono)
    wav = tmp_path / "stereo.wav"
    write_wav(wav, np.stack([left, 0.5 * left], axis=1).astype(np.float32), 44100)
    result = transcribe(str(bundle), "--audio_path", str(wav), "--json")
    assert result.returncode == 0, result.stderr.decode()
    events = [json.loads(line) for line in result.stdout.decode().splitlines()]
    text = "".join(e["text"] for e in events if e["type"] == "text")
    assert text and text == local_text(bundle, load_audio(wav))
    assert events[-1]["type"] == "final" and events[-1]["end_s"] == pytest.approx(3.0, abs=0.01)
    assert "real-time factor" in result.stderr.decode()


def test_mic_reads_float32_from_stdin(bundles):
    bundle = bundles("xnnpack-stream")
    audio = speechlike(2.0, seed=61).numpy()
    result = transcribe(str(bundle), "--mic", stdin=audio.astype("<f4").tobytes() + b"\x00\x00")  # a torn sample
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == local_text(bundle, audio).strip()


@pytest.mark.parametrize("args, message", [
    (["--audio_path", "x.wav", "--mic"], "exactly one of --audio_path or --mic"),
    (["--audio_path", "missing.wav"], "missing.wav"),
])
def test_errors(bundles, tmp_path, args, message):
    result = transcribe(str(bundles("xnnpack-stream")), *args)
    assert result.returncode == 2 and message in result.stderr.decode()


def test_streaming_flag_needs_a_streaming_program(bundles, tmp_path):
    wav = tmp_path / "a.wav"
    write_wav(wav, speechlike(1.0).numpy(), 16000)
    result = transcribe(str(bundles("xnnpack-offline")), "--audio_path", str(wav), "--streaming")
    assert result.returncode == 2 and "offline program" in result.stderr.decode()


def test_the_suite_runs_with_the_runtimes_thread_settings():
    """conftest imports voxtral_runtime before torch, so torch's OpenMP pool has the runtime's thread count here, as
    under `voxtral-runtime serve` (one unless the user's OMP_NUM_THREADS says otherwise)."""
    import os

    import torch

    assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"])
