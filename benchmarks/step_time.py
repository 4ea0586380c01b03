"""Streaming step benchmark: where the 80 ms go, against the memory-bandwidth floor and eager PyTorch, in one run.

    uv run benchmarks/step_time.py BUNDLE --checkpoint CKPT [--steps 50] [--no-eager]

BUNDLE is a streaming export (e.g. benchmarks/export_full.py's xnnpack-streaming-8da4w); CKPT the checkpoint it came
from (for the eager comparison and the KV-cache sizes). Everything is measured in one run, side by side:
- copy bandwidth: a 1 GiB tensor copy on every core (bytes read + written per second);
- the floor: bytes one step must read (weights without the embedding table, of which one row is read; and the KV
  caches the attention kernels scan) divided by that bandwidth;
- each method of a step (preprocessor window, encoder step, token embedding, decoder step), median over the steps;
- the session's whole step (Python bookkeeping included) and so the Python overhead;
- the same step in eager PyTorch with the same (quantized) weights (in a child process: eager wants an OpenMP
  thread per core, the runtime one);
- the real-time factor: step time / 80 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import voxtral_runtime  # noqa: F401  first: it pins OpenMP to one thread before torch loads, as the runtime runs

import numpy as np
import torch

STEP_S = 0.08


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def copy_bandwidth(gib: float = 1.0) -> float:
    """Bytes moved (read + written) per second by a large tensor copy, all threads."""
    src = torch.ones(int(gib * 2**30) // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = median_time(lambda: dst.copy_(src), 5)
    return 2 * src.numel() * 4 / seconds


def bytes_per_step(bundle: Path, meta: dict, params: dict) -> tuple[float, float]:
    """(weights read per step, KV cache bytes scanned per step: every ring slot, each KV head once, fp32)."""
    from voxtral_model.attention import ring_slots

    emb_bytes = meta["vocab_size"] * meta["dim"] * (1 if "embedding=8w" in meta["quantization"] else 4)
    weights = (bundle / "model.pte").stat().st_size - emb_bytes
    enc = params["multimodal"]["whisper_model_args"]["encoder_args"]
    kv = 4 * 2 * (enc["n_layers"] * ring_slots(meta["max_enc_len"]) * enc["n_heads"] * enc["head_dim"]
                  + params["n_layers"] * ring_slots(meta["sliding_window"]) * params["n_kv_heads"] * params["head_dim"])
    return weights, kv


def executorch_parts(engine, steps: int) -> dict[str, float]:
    inst = engine.instance()
    run = inst.run
    meta = engine.spec.meta
    window = torch.zeros(meta["stream_window_samples"])
    mel = run(inst.stream_window, window)
    # Fill the prompt so the decoder runs single-token steps at realistic positions.
    session = engine.session(inst)
    session.feed(np.zeros(meta["step_samples"] * 8, dtype=np.float32))
    position = [session.step_index]
    token = torch.tensor([[meta["streaming_pad_id"]]])

    def encoder():
        p = position[0]
        position[0] += 1
        return run(inst.encode_chunk, mel, torch.arange(4 * p, 4 * p + 4))

    audio = encoder()
    embed = run(inst.token_embedding, token)

    def decoder():
        p = position[0]
        position[0] += 1
        return run(inst.text_decoder, audio + embed, torch.tensor([p]))

    return {
        "preprocessor window": median_time(lambda: run(inst.stream_window, window), steps),
        "encoder step": median_time(encoder, steps),
        "token embedding": median_time(lambda: run(inst.token_embedding, token), steps),
        "decoder step": median_time(decoder, steps),
    }


def session_step(engine, steps: int) -> tuple[float, float]:
    """(wall time per step of a whole session feeding 80 ms at a time, of which inside method calls), medians after
    the prompt. The method time is taken inside the same steps, so the difference is the session's own work."""
    meta = engine.spec.meta
    instance = engine.instance()
    session = engine.session(instance)
    inside = [0.0]
    plain_run = instance.run

    def timed_run(method, *inputs):
        t = time.perf_counter()
        out = plain_run(method, *inputs)
        inside[0] += time.perf_counter() - t
        return out

    instance.run = timed_run
    chunk = (np.random.default_rng(0).standard_normal(meta["step_samples"]) * 0.05).astype(np.float32)
    for _ in range(10):  # with the left padding, past the 39-token prompt prefill
        session.feed(chunk)
    times, in_methods = [], []
    for _ in range(steps):
        inside[0] = 0.0
        t = time.perf_counter()
        session.feed(chunk)
        times.append(time.perf_counter() - t)
        in_methods.append(inside[0])
    return statistics.median(times), statistics.median(in_methods)


def in_child(args: argparse.Namespace, role: str, steps: int) -> float:
    """Runs `role` (bandwidth or eager) in a child process with an OpenMP thread per core: eager matmuls and a
    bandwidth measurement need every core through OpenMP, while the runtime runs with one OpenMP thread."""
    env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count())}
    out = subprocess.run([sys.executable, __file__, str(args.bundle), "--checkpoint", str(args.checkpoint), "--steps",
                          str(steps), "--child", role], env=env, check=True, stdout=subprocess.PIPE, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def eager_step(checkpoint: Path, manifest: dict, steps: int) -> float:
    from voxtral_export.options import ExportOptions
    from voxtral_export.quantize import quantize_model
    from voxtral_model.checkpoint import load_model
    from voxtral_model.model import RuntimeOptions

    o = manifest["options"]
    options = ExportOptions(**{**o, "model_path": Path(o["model_path"]), "output_dir": Path(o["output_dir"])})
    model = load_model(checkpoint, RuntimeOptions(
        layout=options.layout, streaming=True, decoder_window=options.sliding_window,
        encoder_window=options.max_enc_len, dtype=torch.bfloat16 if options.quantized else torch.float32))
    quantize_model(model, options, torch.float32)
    encoder = model.streaming_encoder()
    n_mels, dim = model.config.encoder.num_mel_bins, model.config.decoder.dim
    mel = torch.zeros(1, n_mels, 8)
    position = [40]
    token = torch.tensor([[32]])

    @torch.no_grad()
    def step():
        p = position[0]
        position[0] += 1
        audio = encoder(mel, torch.arange(4 * p, 4 * p + 4))
        return model.decode(audio + model.embed_tokens(token), torch.tensor([p]))

    step()
    return median_time(step, steps)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--no-eager", action="store_true", help="skip the eager PyTorch comparison")
    p.add_argument("--child", choices=["bandwidth", "eager"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child == "bandwidth":
        print(copy_bandwidth())
        return 0
    if args.child == "eager":
        manifest = json.loads((args.bundle / "manifest.json").read_text())
        print(eager_step(args.checkpoint, manifest, args.steps))
        return 0

    from voxtral_runtime.engine import Engine
    from voxtral_runtime.programs import BundlePaths

    print(f"torch threads: {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})", flush=True)
    bandwidth = in_child(args, "bandwidth", 0)
    engine = Engine(BundlePaths.resolve(args.bundle))
    meta = engine.spec.meta
    if not meta["streaming"]:
        print("error: the bundle is not a streaming export", file=sys.stderr)
        return 2
    params = json.loads((args.checkpoint / "params.json").read_text())
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    weights, kv = bytes_per_step(args.bundle, meta, params)
    parts = executorch_parts(engine, args.steps)
    whole, in_methods = session_step(engine, args.steps)
    methods = sum(parts.values())
    eager = None if args.no_eager else in_child(args, "eager", max(5, args.steps // 3))

    floor_w, floor_all = weights / bandwidth, (weights + kv) / bandwidth
    print(f"\nbundle {args.bundle} ({meta['quantization']}, {meta['backend']}, decoder window "
          f"{meta['sliding_window']}, encoder window {meta['max_enc_len']})")
    print(f"copy bandwidth                {bandwidth / 1e9:8.1f} GB/s (read + write)")
    print(f"weights read per step         {weights / 1e9:8.2f} GB   floor {floor_w * 1e3:7.1f} ms")
    print(f"+ KV caches scanned per step  {kv / 1e9:8.2f} GB   floor {floor_all * 1e3:7.1f} ms")
    for name, seconds in parts.items():
        print(f"  {name:26s}  {seconds * 1e3:8.1f} ms")
    print(f"sum of the method medians     {methods * 1e3:8.1f} ms")
    print(f"session step (whole)          {whole * 1e3:8.1f} ms, of which in method calls {in_methods * 1e3:.1f} ms")
    print(f"Python overhead per step      {(whole - in_methods) * 1e3:8.1f} ms ({(whole - in_methods) / whole:.1%})")
    print(f"step / weights floor          {whole / floor_w:8.2f}x")
    print(f"step / weights+KV floor       {whole / floor_all:8.2f}x")
    if eager is not None:
        print(f"eager PyTorch step            {eager * 1e3:8.1f} ms   ExecuTorch/eager {whole / eager:6.2f}x")
    print(f"real-time factor              {whole / STEP_S:8.2f}  ({'faster' if whole < STEP_S else 'slower'} "
          f"than real time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
