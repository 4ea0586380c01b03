"""voxtral-client --mic against a real PortAudio input device: a PulseAudio null sink whose monitor is the default
source, fed a WAV by paplay, through ALSA's pulse plugin into PortAudio/sounddevice, to a real server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from servers import start_in_process
from signals import speechlike
from voxtral_runtime.audio import write_wav

pytestmark = pytest.mark.slow
SINK = "voxtral_test_mic"


def pulse_running() -> bool:
    return shutil.which("pactl") is not None and subprocess.run(["pactl", "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def null_sink_source():
    if not pulse_running():
        if os.environ.get("CI"):
            pytest.fail("PulseAudio is not running: .ci/run must install and start it")
        pytest.skip("needs a running PulseAudio server (apt-get install pulseaudio pulseaudio-utils "
                    "libasound2-plugins; pulseaudio -D)")
    module = subprocess.run(["pactl", "load-module", "module-null-sink", f"sink_name={SINK}"], check=True,
                            capture_output=True, text=True).stdout.strip()
    previous = subprocess.run(["pactl", "get-default-source"], capture_output=True, text=True).stdout.strip()
    subprocess.run(["pactl", "set-default-source", f"{SINK}.monitor"], check=True)
    yield SINK
    if previous:
        subprocess.run(["pactl", "set-default-source", previous])
    subprocess.run(["pactl", "unload-module", module])


@pytest.fixture
def playing(null_sink_source, tmp_path):
    """Plays a speech-like WAV into the null sink, over and over, for the duration of a test."""
    wav = tmp_path / "speech.wav"
    write_wav(wav, speechlike(3.0, seed=40).numpy(), 16000)
    player = subprocess.Popen(["bash", "-c", f"while true; do paplay --device={null_sink_source} {wav}; done"],
                              start_new_session=True)
    time.sleep(0.5)
    yield
    os.killpg(player.pid, signal.SIGKILL)
    player.wait()


def test_the_default_input_device_hears_the_wav(playing):
    import sounddevice as sd

    recording = sd.rec(16000, samplerate=16000, channels=1, dtype="float32", blocking=True)
    assert float(np.sqrt(np.mean(recording**2))) > 0.01


def test_client_mic_streams_to_a_real_server(playing, bundles):
    server = start_in_process(bundles("xnnpack-stream"), max_sessions=1)
    try:
        client = subprocess.Popen([sys.executable, "-m", "voxtral_client.cli", "--server", f"127.0.0.1:{server.port}",
                                   "--mic", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(5)
        client.send_signal(signal.SIGINT)  # Ctrl+C: flush, then the final text
        out, err = client.communicate(timeout=60)
    finally:
        server.stop(0)
    assert client.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    finals = [e for e in events if e.get("type") == "final"]
    assert finals and finals[-1]["reason"] == "end_of_audio", events[-3:]
    assert events[-1]["audio_processed_s"] > 2.0
    assert any(e.get("type") == "delta" and e.get("text") for e in events)
