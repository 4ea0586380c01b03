"""Deterministic test audio: a gliding tone gated on and off with a little noise (speech-like energy changes)."""

from __future__ import annotations

import numpy as np
import torch

SAMPLE_RATE = 16000


def speechlike(seconds: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * SAMPLE_RATE)
    t = torch.arange(n) / SAMPLE_RATE
    tone = 0.3 * torch.sin(2 * torch.pi * (220 + 80 * torch.sin(2 * torch.pi * 0.7 * t)) * t)
    gate = (torch.sin(2 * torch.pi * (1.3 + seed * 0.1) * t) > -0.2).float()
    return (tone * gate + 0.02 * torch.randn(n, generator=g)).float()


def pcm16(seconds: float, seed: int = 0) -> bytes:
    """speechlike() as 16-bit little-endian PCM bytes, what a client sends."""
    return (np.clip(speechlike(seconds, seed=seed).numpy(), -1, 1) * 32767).astype("<i2").tobytes()
