"""Checks that a session's methods do not disturb each other's state, on any bundle (the tiny test models cannot show
what only a full-size program's memory plan does).

    uv run benchmarks/method_isolation.py BUNDLE [--steps 20]

Runs the decoder --steps positions on random embeddings three ways in fresh instances: alone; with a token_embedding
call before each step; with an encoder step and a token_embedding call before each step (streaming bundles). Prints
the largest logit difference of each against the decoder alone: 0 when every method keeps its own state, as the
runtime's instances must (programs.ModelInstance; docs/runtime.md, "Server"). Exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import voxtral_runtime  # noqa: F401  first: the runtime's thread settings

import torch

from voxtral_runtime.bundle import BundlePaths

from voxtral_runtime.programs import ModelInstance, load_spec


def decoder_logits(spec, steps: int, embed: bool, encode: bool) -> torch.Tensor:
    instance, run = ModelInstance(spec), ModelInstance.run
    meta = spec.meta
    g, audio = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)  # the same embeds every way
    rows = []
    for p in range(steps):
        embeds = torch.randn(1, 1, meta.dim, generator=g) * 0.2
        if encode:
            mel = torch.randn(1, meta.num_mel_bins, meta.chunk_mel_len, generator=audio)
            run(instance.encode_chunk, mel, torch.arange(4 * p, 4 * p + 4))
        if embed:
            run(instance.token_embedding, torch.tensor([[meta.bos_id]]))
        rows.append(run(instance.text_decoder, embeds, torch.tensor([p]))[0, -1])
    return torch.stack(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    spec = load_spec(BundlePaths.resolve(args.bundle))
    alone = decoder_logits(spec, args.steps, embed=False, encode=False)
    ways = {"token_embedding between decoder steps": (True, False)}
    if spec.streaming:
        ways["encoder step and token_embedding between decoder steps"] = (True, True)
    worst = 0.0
    for what, (embed, encode) in ways.items():
        diff = (decoder_logits(spec, args.steps, embed, encode) - alone).abs().max().item()
        worst = max(worst, diff)
        print(f"{what}: largest logit difference {diff:.3g} (logits up to {alone.abs().max().item():.3g})")
    return 0 if worst == 0.0 else 1


if __name__ == "__main__":
    sys.exit(main())
