"""The whole pipeline end to end on an embedded default: `uv run scripts/demo.py`.

1. a tiny synthetic checkpoint in Mistral's exact format (random weights), written once;
2. `voxtral-export --streaming` to ExecuTorch/XNNPACK, once (cached in .cache/demo);
3. `voxtral-runtime serve` on a free loopback port;
4. a generated speech-like WAV streamed through `voxtral-client` at real time, text printed live with timings.

The weights are random, so the text is meaningless; every stage is the real code path. For the real model, see the
README's real-weights workflow.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "demo"
SAMPLE_RATE = 16000


def speechlike_wav(path: Path, seconds: float = 6.0) -> None:
    """Vowel-like bursts: a pitch glide through two formant resonances, syllable-rate gating, breath noise."""
    from voxtral_runtime.audio import write_wav

    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.4 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 20))
    formants = 0.6 * np.sin(2 * np.pi * 700 * t) + 0.4 * np.sin(2 * np.pi * 1200 * t)
    gate = np.clip(np.sin(2 * np.pi * 3.5 * t) * 2, 0, 1) * (np.sin(2 * np.pi * 0.25 * t) > -0.6)
    audio = 0.25 * gate * voice * (0.6 + 0.4 * formants) + 0.005 * rng.standard_normal(len(t))
    write_wav(path, (audio / np.abs(audio).max() * 0.7).astype(np.float32), SAMPLE_RATE)


def bundle_is_current(bundle: Path) -> bool:
    """A cached bundle is reused only while its metadata is what this checkout's .pte contract writes: the same
    format version, and every key the contract has (also those added without a new version, such as
    state_buffers, which an older bundle lacks)."""
    import dataclasses

    from voxtral_format.pte import FORMAT_VERSION, MODEL_FILE, MetadataError, ModelMetadata
    from voxtral_runtime.bundle import ProgramError, read_manifest

    if not (bundle / MODEL_FILE).exists():
        return False
    try:
        written = read_manifest(bundle).get("metadata", {})
        metadata = ModelMetadata.from_constants(written)
    except (ProgramError, MetadataError):
        return False
    every_key = all(f.name in written for f in dataclasses.fields(ModelMetadata))
    return every_key and metadata.pte_format_version == FORMAT_VERSION


def build(progress: bool) -> Path:
    from voxtral_export.options import ExportOptions
    from voxtral_export.pipeline import export_bundle
    from voxtral_export.progress import Progress
    from voxtral_model.synth import write_synthetic_checkpoint

    checkpoint, bundle = CACHE / "checkpoint", CACHE / "bundle"
    if not (checkpoint / "consolidated.safetensors").exists():
        print("• writing a tiny synthetic checkpoint (random weights) ...", flush=True)
        write_synthetic_checkpoint(checkpoint, "tiny", seed=0)
    if not bundle_is_current(bundle):
        print("• exporting it to ExecuTorch (XNNPACK, streaming; about two minutes, once) ...", flush=True)
        export_bundle(ExportOptions(model_path=checkpoint, output_dir=bundle, streaming=True),
                      Progress(enabled=progress))
    return bundle


def quiet_libraries() -> None:
    """The demo's output is the transcript: silence library deprecation chatter."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("torch", "torchao", "executorch"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main() -> int:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wav", type=Path, help="stream this WAV instead of the generated one")
    parser.add_argument("--fast", action="store_true", help="send audio as fast as possible, not at real time")
    parser.add_argument("--quiet", action="store_true", help="no export progress")
    args = parser.parse_args()

    started = time.monotonic()
    bundle = build(progress=not args.quiet)
    wav = args.wav or CACHE / "speechlike.wav"
    if not wav.exists():
        speechlike_wav(wav)

    from voxtral_client.audio import file_chunks, read_wav
    from voxtral_client.client import RealtimeClient
    from voxtral_runtime.bundle import BundlePaths
    from voxtral_runtime.server import Server, ServerOptions

    print("• starting voxtral-runtime serve on loopback ...", flush=True)
    server = Server(BundlePaths.resolve(bundle), "127.0.0.1", 0, ServerOptions(max_sessions=1))
    address = f"127.0.0.1:{server.port}"
    print(f"  serving {bundle} on {address} ({time.monotonic() - started:.1f} s since start)")
    audio = read_wav(wav)
    seconds = audio.duration_s
    print(f"• streaming {wav.name} ({seconds:.1f} s, {audio.sample_rate} Hz) through voxtral-client"
          f"{' as fast as possible' if args.fast else ' at real time'}:\n")
    first_text = None
    with RealtimeClient(address) as client:
        t0 = time.monotonic()
        chunks = file_chunks(audio, chunk_ms=80, realtime=not args.fast)
        for event in client.transcribe(chunks, audio.sample_rate, encoding=audio.encoding):
            if event.kind == "delta" and event.text:
                first_text = first_text or time.monotonic() - t0
                sys.stdout.write(event.text)
                sys.stdout.flush()
            elif event.kind == "final":
                elapsed = time.monotonic() - t0
    server.stop(0)
    print("\n")
    print(f"  audio {seconds:.1f} s, session {elapsed:.1f} s, first text after {first_text or 0:.2f} s")
    print("  NOTE: the weights are random, so the words are meaningless; the pipeline is real "
          "(checkpoint -> export -> ExecuTorch -> gRPC -> client).")
    print("  For the real model: see README.md, 'Real weights'.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
