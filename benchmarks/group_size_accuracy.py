"""Accuracy of int4 group sizes against the fp32 eager model, on the export's own quantized weights.

    uv run benchmarks/group_size_accuracy.py --checkpoint CKPT [--group-sizes 0 32 64 128 256] [--seconds 12]

For each group size (0: one scale per output channel) the checkpoint is quantized exactly as `voxtral-export`
quantizes it for the README recipe (voxtral_export.quantize.quantize_model: 8da4w linears in encoder and decoder,
the same group size for both, 8w embedding), then run in eager PyTorch, where torchao computes what the program
computes (int8 per-token activations, the int4 weights dequantized; the tests bound programs against this eager
model). No export is needed, so a row costs about two minutes at full size instead of twenty.

The reference is the unquantized fp32 model. It decodes a speech-like signal greedily, one token per 80 ms step
(prompt prefill, then one row per step); every model is then fed those tokens (teacher forcing: one early
disagreement does not derail the rest) in one batched pass over all steps (causal, so the logits are those of
streaming). Printed per group size: the rounding error of the linears' weights (RMS of the error over RMS of the
weights, all quantized linears together), the cosine of the audio embeddings (encoder + adapter output) with the
reference's, and over every step that samples a token the logit cosine (mean, 5th percentile, min), the share of
steps whose argmax is the reference's token, and the share whose argmax is in the reference's top 5.

Random weights make a model that amplifies any rounding: its attention is nearly one-hot (random queries and keys
give logits of a wide spread), so a small change flips which key a head reads, and no layer has the redundancy a
trained one has. On a synthetic checkpoint the logit columns are therefore near 0 for every group size and say
nothing; the weight error and the audio embeddings rank the group sizes. Accuracy proper needs the real weights,
which have outliers that per-channel scales handle worse than random ones.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import torch
from torch.nn.functional import cosine_similarity

sys.path.insert(0, str(Path(__file__).parent))
from accuracy import TOP_K, voice  # noqa: E402  one speech-like signal for every accuracy benchmark

MAX_SEQ_LEN = 4096  # flat cache of the eager model: enough for 300 s of steps


def weight_error(model, checkpoint: Path) -> float:
    """RMS of (dequantized - original) over RMS of the original, over every quantized linear of `model`."""
    from safetensors import safe_open
    from torchao.quantization import IntxUnpackedToInt8Tensor
    from voxtral_model.checkpoint import checkpoint_key_map

    keys = {name: key for key, name in checkpoint_key_map(model.config).items()}
    error = total = 0.0
    with safe_open(str(checkpoint / "consolidated.safetensors"), framework="pt") as f:
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if isinstance(weight, IntxUnpackedToInt8Tensor) and name + ".weight" in keys:
                original = f.get_tensor(keys[name + ".weight"]).float()
                error += (weight.dequantize().float() - original).pow(2).sum().item()
                total += original.pow(2).sum().item()
    return (error / total) ** 0.5


def load(checkpoint: Path, group_size: int | None):
    """The fp32 eager model (group_size None) or the export's 8da4w quantization of it at `group_size`."""
    from voxtral_model.checkpoint import load_model, load_model_lazily
    from voxtral_model.model import RuntimeOptions

    options = RuntimeOptions(max_seq_len=MAX_SEQ_LEN, dtype=torch.float32)
    if group_size is None:
        return load_model(checkpoint, options)
    from voxtral_export.options import ExportOptions
    from voxtral_export.quantize import quantize_model

    model, weights = load_model_lazily(checkpoint, options)
    recipe = ExportOptions(model_path=checkpoint, qlinear="8da4w", qlinear_group_size=group_size,
                           qlinear_encoder="8da4w", qlinear_encoder_group_size=group_size, qembedding="8w")
    quantize_model(model, recipe, torch.float32, weights=weights)
    return model


@torch.no_grad()
def greedy_tokens(model, audio: torch.Tensor, prompt: list[int]) -> list[int]:
    """The tokens a streaming session feeds: the prompt, then the model's greedy choice at every step."""
    tokens = list(prompt)
    n = len(prompt)
    logits = model.decode(audio[:, :n] + model.embed_tokens(torch.tensor([tokens])), torch.arange(n), True)
    for p in range(n, audio.shape[1]):
        tokens.append(int(logits[0, -1].argmax()))
        logits = model.decode(audio[:, p:p + 1] + model.embed_tokens(torch.tensor([[tokens[-1]]])),
                              torch.tensor([p]), True)
    return tokens


@torch.no_grad()
def teacher_forced(model, audio: torch.Tensor, tokens: list[int], first: int) -> torch.Tensor:
    """Logits of every sampling step (positions first..), all steps in one causal pass."""
    embeds = audio + model.embed_tokens(torch.tensor([tokens]))
    return model.decode(embeds, torch.arange(len(tokens)))[0, first:].float()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--group-sizes", type=int, nargs="+", default=[0, 32, 64, 128, 256],
                   help="int4 group sizes, 0 for one scale per output channel (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=12.0, help="speech-like audio (default: %(default)s)")
    args = p.parse_args()

    from voxtral_model.config import load_config
    from voxtral_model.mel import LogMel
    from voxtral_model.reference import pad_audio

    torch.set_num_threads(os.cpu_count())
    started = time.monotonic()

    def say(what: str) -> None:
        print(f"[{time.monotonic() - started:6.0f}s] {what}", file=sys.stderr, flush=True)

    config = load_config(args.checkpoint)
    mel = LogMel(config.encoder)(pad_audio(config, voice(args.seconds)))
    prompt = config.prompt_ids()
    first = len(prompt) - 1

    say("fp32 reference: loading")
    model = load(args.checkpoint, None)
    with torch.no_grad():
        ref_audio = model.encode_audio(mel)
    say(f"fp32 reference: greedy decoding {ref_audio.shape[1]} steps")
    tokens = greedy_tokens(model, ref_audio, prompt)
    ref_logits = teacher_forced(model, ref_audio, tokens, first)
    chosen, top = ref_logits.argmax(-1), ref_logits.topk(TOP_K, dim=-1).indices
    del model
    gc.collect()

    rows = []
    for group_size in args.group_sizes:
        label = f"group {group_size}" if group_size else "per channel"
        say(f"{label}: quantizing")
        model = load(args.checkpoint, group_size)
        say(f"{label}: running")
        with torch.no_grad():
            audio = model.encode_audio(mel)
        logits = teacher_forced(model, audio, tokens, first)
        rounding = weight_error(model, args.checkpoint)
        audio_cos = cosine_similarity(audio[0].double(), ref_audio[0].double(), dim=-1).mean()
        cos = cosine_similarity(logits.double(), ref_logits.double(), dim=-1)
        argmax = logits.argmax(-1)
        agree, in_top = (argmax == chosen).double().mean(), (top == argmax[:, None]).any(-1).double().mean()
        rows.append(f"| {label} | {rounding:.4f} | {audio_cos:.4f} | {cos.mean():.4f} | {cos.quantile(0.05):.4f} | "
                    f"{cos.min():.4f} | {agree:.3f} | {in_top:.3f} |")
        del model, audio, logits
        gc.collect()

    sampled = tokens[first + 1 :]
    print(f"\n{args.checkpoint}: 8da4w linears (encoder and decoder), 8w embedding, against fp32; "
          f"{len(ref_logits)} sampled steps of {args.seconds:g} s speech-like audio, teacher-forced (the fp32 "
          f"model chose {len(set(sampled))} distinct tokens in its {len(sampled)} steps)\n")
    print("| int4 scales | weight rounding error | audio embedding cosine | logit cosine mean | p5 | min | "
          f"argmax agreement | argmax in reference top-{TOP_K} |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
