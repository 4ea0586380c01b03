"""Accuracy of streaming exports against the fp32 eager model: logit cosine and argmax agreement, step by step.

    uv run benchmarks/accuracy.py BUNDLE [BUNDLE ...] --checkpoint CKPT [--seconds 24] [--reference FILE]

Each BUNDLE is a streaming export of CKPT (any quantization, group size or KV-cache type; all with the same windows). A speech-like
signal is streamed 80 ms at a time, as a session would, first through the unquantized fp32 eager model (plain PyTorch
attention, its own log-mel frontend), which chooses its greedy token at every step: that run is the reference.
Then through each program (its preprocessor, encode_audio_chunk, token_embedding and text_decoder, one step per
call), fed the reference's tokens (teacher forcing: one early disagreement does not derail the rest). Prints one row
per bundle, over every step that samples a token: the cosine of its logits with the reference's (mean, 5th
percentile, min), the share of steps whose argmax is the reference's token, and the share whose argmax is in the
reference's top 5.

The reference costs about 2.5 s a step at full size and 16 GiB (4 bytes per weight); `--reference FILE` keeps it
(computed when the file is missing, checked against the checkpoint, length and windows when it is read), so the
rows of a group-size table all compare against one reference. Models are loaded one at a time.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import sys
import time
from pathlib import Path

import voxtral_runtime  # noqa: F401  first: one OpenMP thread for the programs, as the runtime runs them

import numpy as np
import torch

SAMPLE_RATE = 16000
TOP_K = 5


def voice(seconds: float) -> torch.Tensor:
    """A vowel-like signal: harmonics of a gliding pitch, gated at a syllable rate, over faint noise."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    phase = 2 * np.pi * np.cumsum(110 + 25 * np.sin(2 * np.pi * 0.3 * t)) / SAMPLE_RATE
    harmonics = sum(np.sin(k * phase) / k for k in range(1, 16))
    syllables = np.clip(2 * np.sin(2 * np.pi * 3.0 * t), 0, 1) * (np.sin(2 * np.pi * 0.2 * t) > -0.5)
    noise = 0.004 * np.random.default_rng(0).standard_normal(len(t))
    signal = 0.3 * syllables * harmonics + noise
    return torch.from_numpy(0.7 * signal / np.abs(signal).max()).float()


def reference_key(checkpoint: Path, seconds: float, meta) -> dict:
    """What a kept reference must match: the checkpoint's files (by size and params.json), the audio and windows."""
    weights = checkpoint / "consolidated.safetensors"
    params = hashlib.sha256((checkpoint / "params.json").read_bytes()).hexdigest()
    return {"params_sha256": params, "weights_bytes": weights.stat().st_size, "seconds": seconds,
            "sliding_window": meta.sliding_window, "max_enc_len": meta.max_enc_len}


@torch.no_grad()
def reference_run(checkpoint: Path, meta, windows: list[torch.Tensor], progress) -> tuple[list[int], torch.Tensor]:
    """The fp32 eager model streamed free-running: (the tokens it is fed at each step, its sampled-step logits)."""
    from voxtral_model.checkpoint import load_model
    from voxtral_model.mel import LogMel
    from voxtral_model.model import RuntimeOptions

    torch.set_num_threads(os.cpu_count())  # eager matmuls want every core; the programs run on one OpenMP thread
    model = load_model(checkpoint, RuntimeOptions(streaming=True, decoder_window=meta.sliding_window,
                                                  encoder_window=meta.max_enc_len, dtype=torch.float32))
    encoder, frontend = model.streaming_encoder(), LogMel(model.config.encoder)
    frames, prompt = meta.downsample_factor, meta.prompt_ids
    tokens, rows = [], []
    for p, window in enumerate(windows):
        token = prompt[p] if p < len(prompt) else int(rows[-1].argmax())
        tokens.append(token)
        audio = encoder(frontend.stream_window(window), torch.arange(frames * p, frames * (p + 1)))
        logits = model.decode(audio + model.embed_tokens(torch.tensor([[token]])), torch.tensor([p]), True)
        if p >= len(prompt) - 1:
            rows.append(logits[0, -1].float())
        progress("fp32 eager reference", p + 1, len(windows))
    del model, encoder
    gc.collect()
    torch.set_num_threads(1)
    return tokens, torch.stack(rows)


def program_logits(spec, windows: list[torch.Tensor], tokens: list[int], progress) -> torch.Tensor:
    """The program's sampled-step logits, fed `tokens` (the reference's)."""
    from voxtral_runtime.programs import ModelInstance

    instance = ModelInstance(spec)
    run = ModelInstance.run
    frames, first = spec.meta.downsample_factor, len(spec.meta.prompt_ids) - 1
    rows = []
    for p, window in enumerate(windows):
        mel = run(instance.stream_window, window)
        audio = run(instance.encode_chunk, mel, torch.arange(frames * p, frames * (p + 1)))
        embeds = audio + run(instance.token_embedding, torch.tensor([[tokens[p]]]))
        logits = run(instance.text_decoder, embeds, torch.tensor([p]))[0, -1]
        if p >= first:
            rows.append(logits.clone())
        progress(f"program {spec.meta.quantization}", p + 1, len(windows))
    return torch.stack(rows)


def load_reference(path: Path | None, key: dict) -> tuple[list[int], torch.Tensor] | None:
    if path is None or not path.is_file():
        return None
    kept = torch.load(path)
    if kept["key"] != key:
        raise SystemExit(f"error: {path} is a reference for {kept['key']}, not {key}; delete it or pass another file")
    return kept["tokens"], kept["logits"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundles", type=Path, nargs="+", metavar="BUNDLE")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=24.0, help="speech-like audio streamed (default: %(default)s)")
    p.add_argument("--reference", type=Path, help="keep the fp32 reference run in this file (reused when it matches)")
    args = p.parse_args()

    from voxtral_model.config import load_config
    from voxtral_model.reference import pad_audio, stream_mel_windows
    from voxtral_format.pte import ModelMetadata
    from voxtral_runtime.bundle import BundlePaths, read_manifest
    from voxtral_runtime.programs import load_spec

    config = load_config(args.checkpoint)
    windows = [w for _, w in stream_mel_windows(config, pad_audio(config, voice(args.seconds)))]
    metas = [ModelMetadata.from_constants(read_manifest(bundle).get("metadata", {})) for bundle in args.bundles]
    meta = metas[0]
    for bundle, other in zip(args.bundles, metas):
        if (other.sliding_window, other.max_enc_len) != (meta.sliding_window, meta.max_enc_len):
            raise SystemExit(f"error: {bundle} has other windows than {args.bundles[0]}; compare them in two runs")
    started = time.monotonic()

    def progress(what: str, done: int, total: int) -> None:
        if done % 50 == 0 or done == total:
            print(f"[{time.monotonic() - started:7.1f}s] {what}: step {done}/{total}", file=sys.stderr, flush=True)

    key = reference_key(args.checkpoint, args.seconds, meta)
    kept = load_reference(args.reference, key)
    if kept is None:
        kept = reference_run(args.checkpoint, meta, windows, progress)
        if args.reference is not None:
            torch.save({"key": key, "tokens": kept[0], "logits": kept[1]}, args.reference)
    tokens, theirs = kept
    chosen, top = theirs.argmax(-1), theirs.topk(TOP_K, dim=-1).indices

    print(f"\n{len(theirs)} sampled steps of {args.seconds:g} s speech-like audio, each program fed the fp32 eager "
          f"model's greedy tokens\n")
    print("| bundle | quantization | KV caches | logit cosine mean | p5 | min | argmax agreement | "
          "argmax in reference top-5 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for bundle in args.bundles:
        spec = load_spec(BundlePaths.resolve(bundle))  # one program in memory at a time
        ours = program_logits(spec, windows, tokens, progress)
        cosine = torch.nn.functional.cosine_similarity(ours.double(), theirs.double(), dim=-1)
        argmax = ours.argmax(-1)
        agree = (argmax == chosen).double().mean()
        in_top = (top == argmax[:, None]).any(-1).double().mean()
        kv = spec.meta.kv_cache_dtype or spec.meta.dtype
        print(f"| {bundle.name} | {spec.meta.quantization} | {kv} | {cosine.mean():.5f} | {cosine.quantile(0.05):.5f} | "
              f"{cosine.min():.5f} | {agree:.3f} | {in_top:.3f} |", flush=True)
        del ours, spec
        gc.collect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
