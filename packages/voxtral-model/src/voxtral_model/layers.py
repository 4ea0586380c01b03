"""Building blocks shared by encoder and decoder: RMSNorm, interleaved RoPE, SwiGLU, the delay time embedding."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

TIME_EMBEDDING_THETA = 10000.0


class RMSNorm(nn.Module):
    """x / rms(x) * w, computed in fp32 and cast back (as the reference does)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


def rope_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """theta^(-2j/d) for j < d/2 (always a real CPU tensor, even while a model is built on the meta device)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64, device="cpu") / head_dim
    return (1.0 / theta**exponents).float()


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of position * inv_freq, shape (T, d/2); computed on the fly so streams have no position limit."""
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Interleaved (GPT-J) rotation of adjacent pairs (2j, 2j+1), as the raw Mistral weights expect.

    x: (B, T, H, D) or (T, H, D); cos/sin: (T, D/2). Math in fp32.
    """
    x_even, x_odd = x.float().reshape(x.shape[:-1] + (-1, 2)).unbind(-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    rotated = torch.stack([x_even * cos - x_odd * sin, x_even * sin + x_odd * cos], dim=-1)
    return rotated.flatten(-2).to(x.dtype)


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x); the encoder's w2 has a bias, nothing else does."""

    def __init__(self, dim: int, hidden_dim: int, down_bias: bool):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=down_bias)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class PreNormBlock(nn.Module):
    """The transformer block both stacks share: RMSNorm before attention and before the feed-forward, each added
    back to the residual. Subclasses give the attention and feed-forward; the names are the checkpoint's."""

    def __init__(self, dim: int, norm_eps: float, attention: nn.Module, feed_forward: nn.Module):
        super().__init__()
        self.attention_norm = RMSNorm(dim, norm_eps)
        self.attention = attention
        self.ffn_norm = RMSNorm(dim, norm_eps)
        self.feed_forward = feed_forward


def time_embedding(delay_tokens: int, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of the delay (cos first), shape (dim,), fp32 (docs/spec.md §4.6)."""
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float64, device="cpu")
    inv_freq = torch.exp(-math.log(TIME_EMBEDDING_THETA) * steps / half)
    angles = delay_tokens * inv_freq
    return torch.cat([angles.cos(), angles.sin()]).float()
