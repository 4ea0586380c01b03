"""Catch-up on a long file: how many seconds of audio a second of compute transcribes when the audio is all there.

    uv run benchmarks/catch_up.py BUNDLE [--offline-bundle BUNDLE2] [--audio FILE] [--seconds 60] [--runs 2]

BUNDLE is a streaming export. Each run measures, one after the other on the same file:
- server: `voxtral-runtime serve BUNDLE` in its own process, started for the run, and `RealtimeClient` sending the
  file as fast as the server takes it (what `voxtral-client --file F --fast` does), from the first byte sent to the
  last Final; also when the first text arrived;
- local: a streaming session fed the whole file at once (what `voxtral-runtime transcribe` does);
- offline: with --offline-bundle, an offline export's session fed the same file at once.
Each way runs in a process of its own, one at a time, and loads its program before the clock starts (an offline
program's instance can take far more memory than a streaming one's).
Printed per way: seconds, audio seconds per second of compute (above 1.0 is faster than real time) as the median
[min-max] over the runs, and how idle the machine was while each ran; and how alike the server's and the local
session's texts are. Without --audio, speech is synthesized with
espeak-ng (benchmarks/endpointing.py's phrases) and repeated to --seconds.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import voxtral_runtime  # noqa: F401  first: one OpenMP thread, as the runtime runs

import numpy as np  # noqa: E402

from endpointing import synthesized  # noqa: E402  espeak-ng phrases with pauses
from step_time import MachineLoad  # noqa: E402  the machine's idle share while a block runs

RATE = 16000
CHUNK_S = 0.1  # the client's default chunk
SERVER_START_TIMEOUT_S = 600


def long_audio(path: Path | None, seconds: float) -> np.ndarray:
    from voxtral_runtime.audio import load_audio

    audio = load_audio(path, RATE) if path else synthesized()
    repeats = int(np.ceil(seconds * RATE / len(audio)))
    return np.tile(audio, repeats)[: int(seconds * RATE)]


def start_server(bundle: Path, tmp: Path) -> tuple[subprocess.Popen, str]:
    port_file = tmp / "port"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "voxtral_runtime.cli", "serve", str(bundle), "--port", "0",
                             "--port-file", str(port_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not (port_file.exists() and port_file.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"error: voxtral-runtime serve {bundle} did not start")
        time.sleep(0.5)
    return proc, f"127.0.0.1:{port_file.read_text().splitlines()[0]}"


def through_server(address: str, audio: np.ndarray) -> tuple[float, float, str]:
    """(seconds from the first byte sent to the last Final, seconds to the first text, text)."""
    from voxtral_client.client import RealtimeClient

    pcm = np.clip(np.round(audio * 32768), -32768, 32767).astype("<i2").tobytes()  # the file's own samples
    step = int(CHUNK_S * RATE) * 2
    chunks = (pcm[i : i + step] for i in range(0, len(pcm), step))
    first_text, pieces = None, []
    with RealtimeClient(address) as client:
        client.wait_ready()
        began = time.perf_counter()
        for event in client.transcribe(chunks, RATE):
            if event.kind == "delta" and event.text:
                pieces.append(event.text)
                first_text = first_text or time.perf_counter() - began
        return time.perf_counter() - began, first_text or float("nan"), "".join(pieces)


def in_child(bundle: Path, wav: Path) -> tuple[float, str]:
    """(seconds of a session fed the whole file at once, text), in a child process that loads `bundle` first."""
    out = subprocess.run([sys.executable, __file__, str(bundle), "--audio", str(wav), "--child"], check=True,
                         capture_output=True, text=True).stdout
    result = json.loads(out.splitlines()[-1])
    return result["seconds"], result["text"]


def session_child(bundle: Path, wav: Path) -> None:
    from voxtral_runtime.audio import load_audio
    from voxtral_runtime.bundle import BundlePaths
    from voxtral_runtime.engine import Engine
    from voxtral_runtime.session import TextPiece

    audio = load_audio(wav, RATE)
    session = Engine(BundlePaths.resolve(bundle)).session()
    began = time.perf_counter()
    events = session.feed(audio) + session.finish()
    took = time.perf_counter() - began
    print(json.dumps({"seconds": took, "text": "".join(e.text for e in events if isinstance(e, TextPiece))}))


def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path, help="a streaming export")
    p.add_argument("--offline-bundle", type=Path, help="an offline export of the same checkpoint")
    p.add_argument("--audio", type=Path, help="a recording (default: synthesized with espeak-ng)")
    p.add_argument("--seconds", type=float, default=60.0, help="audio length (default: %(default)s)")
    p.add_argument("--runs", type=int, default=2, help="runs of each way, alternating (default: %(default)s)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        session_child(args.bundle, args.audio)
        return 0

    from voxtral_runtime.audio import load_audio, write_wav
    from voxtral_runtime.bundle import read_manifest

    ways = {"local": args.bundle, **({"offline": args.offline_bundle} if args.offline_bundle else {})}
    for name, bundle in ways.items():
        if read_manifest(bundle)["options"]["streaming"] != (name == "local"):
            raise SystemExit(f"error: {bundle} is not {'a streaming' if name == 'local' else 'an offline'} export")
    audio = long_audio(args.audio, args.seconds)
    seconds = len(audio) / RATE
    results: dict[str, list[tuple[float, float]]] = {"server": [], **{name: [] for name in ways}}
    first_text, texts = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "audio.wav"
        write_wav(wav, audio, RATE)
        audio = load_audio(wav, RATE)  # 16-bit samples, as the child processes read them
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs} ...", file=sys.stderr, flush=True)
            server, address = start_server(args.bundle, Path(tmp))
            try:
                with MachineLoad() as load:
                    took, first, texts["server"] = through_server(address, audio)
            finally:
                server.terminate()
                server.wait()
            results["server"].append((took, load.idle))
            first_text.append(first)
            for name, bundle in ways.items():
                with MachineLoad() as load:
                    took, texts[name] = in_child(bundle, wav)
                results[name].append((took, load.idle))
    print(f"\n{seconds:.1f} s of audio, {args.runs} runs of each way, alternating; {os.cpu_count()} cores")
    print(f"{'way':10s} {'seconds':>22s} {'audio s per second':>24s} {'machine idle':>16s}")
    for name, rows in results.items():
        took = [t for t, _ in rows]
        idle = [100 * share for _, share in rows]
        speed = [seconds / t for t in took]
        print(f"{name:10s} {spread(took, '7.1f'):>22s} {spread(speed, '.2f'):>24s} {spread(idle, '.0f') + ' %':>16s}")
    similar = difflib.SequenceMatcher(None, texts["server"].split(), texts["local"].split()).ratio()
    print(f"server: first text after {spread(first_text, '.2f')} s; its text against the local session's (last run): "
          f"{'the same' if texts['server'] == texts['local'] else f'{similar:.2f} similar by words (1.0: the same)'}"
          f" ({len(texts['server'])} and {len(texts['local'])} characters)")
    print("  (the server encodes whatever audio is queued when it gets to it, 1 to 16 steps per call, the local "
          "session 16: the same steps in other batches, which give the same bits: docs/runtime.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
