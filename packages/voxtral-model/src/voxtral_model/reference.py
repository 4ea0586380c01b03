"""Eager transcription in plain PyTorch, following Mistral's reference schedule (docs/spec.md §7, Appendix D).

This is the yardstick that exported programs and the runtime are tested against; it is not the fast path.
"""

from __future__ import annotations

import torch

from .config import VoxtralConfig
from .mel import stream_window_left_context, stream_window_samples
from .model import VoxtralRealtime


def pad_audio(config: VoxtralConfig, waveform: torch.Tensor) -> torch.Tensor:
    """Left: the prompt's silence; right: align to a whole token, then delay + 1 + 10 tokens of silence."""
    tok = config.samples_per_token
    align = (-waveform.shape[0]) % tok
    left = torch.zeros(config.audio.n_left_pad_tokens * tok, dtype=torch.float32)
    right = torch.zeros(align + config.right_pad_tokens * tok, dtype=torch.float32)
    return torch.cat([left, waveform.to(torch.float32), right])


def stream_mel_windows(config: VoxtralConfig, padded: torch.Tensor):
    """Yields (step, window) for each 80 ms step of an already padded signal, as a streaming client would cut it."""
    tok, args = config.samples_per_token, config.encoder
    left = stream_window_left_context(args)
    size = stream_window_samples(args, config.mel_frames_per_token)
    extended = torch.cat([torch.zeros(left), padded, torch.zeros(size)])
    for step in range(padded.shape[0] // tok):
        start = step * tok  # in `extended` coordinates this is the window start (left context included)
        yield step, extended[start : start + size]


@torch.no_grad()
def greedy_decode(config: VoxtralConfig, model: VoxtralRealtime, audio_embeds: torch.Tensor,
                  max_new_tokens: int | None = None) -> list[int]:
    """Prefill the prompt over the first audio embeddings, then one greedy token per audio embedding until EOS.

    audio_embeds: (1, n_tok, dim). Samples positions prompt_length-1 .. n_tok-1. Returns ids without EOS.
    """
    prompt = config.prompt_ids()
    n_prompt = len(prompt)
    embeds = audio_embeds[:, :n_prompt] + model.embed_tokens(torch.tensor([prompt]))
    logits = model.decode(embeds, torch.arange(n_prompt))
    token = int(logits[0, -1].argmax())
    ids: list[int] = []
    for pos in range(n_prompt, audio_embeds.shape[1] + 1):
        if token == config.tokens.eos or (max_new_tokens is not None and len(ids) >= max_new_tokens):
            break
        ids.append(token)
        if pos == audio_embeds.shape[1]:
            break
        step = audio_embeds[:, pos : pos + 1] + model.embed_tokens(torch.tensor([[token]]))
        token = int(model.decode(step, torch.tensor([pos]))[0, -1].argmax())
    return ids
