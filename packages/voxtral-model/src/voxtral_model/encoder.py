"""Causal Whisper-style audio encoder (docs/spec.md §4.3-§4.5): conv stem, RoPE transformer, downsample, adapter.

Offline, the whole mel goes through at once with the 750-frame sliding window applied as in Mistral's reference
(the ExecuTorch example drops it offline, D5). Streaming, `StreamingEncoder` takes one token's 8 mel frames per call
and carries the conv stem's left context and a ring KV cache, so its outputs equal the offline ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .attention import KVCache, ring_slots, windowed_attention
from .config import EncoderArgs
from .layers import PreNormBlock, RMSNorm, SwiGLU, apply_rope, rope_cos_sin, rope_inv_freq

CONV_KERNEL = 3
# Left context of each conv in frames: conv1 (stride 1) pads k-1, conv2 (stride 2) pads k-stride (Mistral's
# reference; the ExecuTorch example pads 2, D2).
CONV1_LEFT_PAD = CONV_KERNEL - 1
CONV2_LEFT_PAD = CONV_KERNEL - 2

# Offline attention runs in blocks of this many encoder frames (see attention.windowed_attention); an exported
# audio encoder therefore takes mel lengths in multiples of 2 * ENCODER_BLOCK_FRAMES.
ENCODER_BLOCK_FRAMES = 128

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class CausalConv(nn.Module):
    """Conv1d that only looks back: `left_pad` zeros before the signal."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, left_pad: int):
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, CONV_KERNEL, stride=stride)
        self.left_pad = left_pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (self.left_pad, 0)))


class EncoderAttention(nn.Module):
    """MHA projections; wq, wv, wo have biases, wk has none."""

    def __init__(self, args: EncoderArgs):
        super().__init__()
        width = args.n_heads * args.head_dim
        self.n_heads, self.head_dim = args.n_heads, args.head_dim
        self.wq = nn.Linear(args.dim, width, bias=True)
        self.wk = nn.Linear(args.dim, width, bias=False)
        self.wv = nn.Linear(args.dim, width, bias=True)
        self.wo = nn.Linear(width, args.dim, bias=True)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend) -> torch.Tensor:
        """x: (..., T, dim) -> (..., T, dim); attend gets q, k, v of shape (..., T, H, D)."""
        shape = (*x.shape[:-1], self.n_heads, self.head_dim)
        q = apply_rope(self.wq(x).view(shape), cos, sin)
        k = apply_rope(self.wk(x).view(shape), cos, sin)
        v = self.wv(x).view(shape)
        return self.wo(attend(q, k, v))


class EncoderLayer(PreNormBlock):
    def __init__(self, args: EncoderArgs):
        super().__init__(args.dim, args.norm_eps, EncoderAttention(args),
                         SwiGLU(args.dim, args.hidden_dim, down_bias=True))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, attend)
        return x + self.feed_forward(self.ffn_norm(x))


class Encoder(nn.Module):
    """Mel (1, n_mels, T) -> encoder frames (1, T/2, dim), whole signal, sliding-window causal attention."""

    def __init__(self, args: EncoderArgs):
        super().__init__()
        self.args = args
        self.conv_layers = nn.ModuleList([
            CausalConv(args.num_mel_bins, args.dim, stride=1, left_pad=CONV1_LEFT_PAD),
            CausalConv(args.dim, args.dim, stride=2, left_pad=CONV2_LEFT_PAD),
        ])
        self.layers = nn.ModuleList([EncoderLayer(args) for _ in range(args.n_layers)])
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.init_buffers()

    def init_buffers(self) -> None:
        self.register_buffer("inv_freq", rope_inv_freq(self.args.head_dim, self.args.rope_theta), persistent=False)

    def conv_stem(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.shape[-1] % 2:  # the reference drops the first frame of an odd-length mel
            mel = mel[..., 1:]
        x = F.gelu(self.conv_layers[0](mel))
        return F.gelu(self.conv_layers[1](x)).transpose(1, 2)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        # Frames stay 2-D (T, dim) through the layers: linears then lower to plain matrix products, which
        # XNNPACK's linear conversion needs for weight-only quantized layers.
        x = self.conv_stem(mel.to(self.norm.weight.dtype))[0]
        seq_len, window = x.shape[0], self.args.sliding_window
        # Blocked attention wants whole blocks; trailing zero frames cannot affect earlier causal outputs.
        pad = (-seq_len) % ENCODER_BLOCK_FRAMES
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
        cos, sin = rope_cos_sin(torch.arange(x.shape[0]), self.inv_freq)

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            y = windowed_attention(q, k, v, window, ENCODER_BLOCK_FRAMES)
            return y.reshape(y.shape[0], -1)

        for layer in self.layers:
            x = layer(x, cos, sin, attend)
        return self.norm(x[:seq_len])[None]


class Adapter(nn.Sequential):
    """Groups `downsample_factor` encoder frames into one token and projects them to the decoder width."""

    def __init__(self, args: EncoderArgs, out_dim: int):
        in_dim = args.dim * args.downsample_factor
        super().__init__(nn.Linear(in_dim, out_dim, bias=False), nn.GELU(), nn.Linear(out_dim, out_dim, bias=False))
        self.in_dim, self.factor = in_dim, args.downsample_factor

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(1, T, enc_dim) with T a multiple of the factor -> (1, T/factor, out_dim); computed 2-D (see Encoder).
        Token t is frames factor*t .. factor*t + factor - 1 side by side: gathered by strided slices, not a reshape,
        because reshaping a symbolic T makes torch.export specialise away the one-token streaming call."""
        grouped = torch.cat([frames[0, j :: self.factor] for j in range(self.factor)], dim=-1)
        return super().forward(grouped)[None]


class StreamingEncoder(nn.Module):
    """k 80 ms steps: mel (1, n_mels, 8k) + encoder positions (4k,) -> k audio embeddings (1, k, out_dim).

    k steps in one call equal k calls of one step (the encoder is causal), up to RING_CHUNK encoder frames a call.

    Carries the conv stem's left context (2 mel frames, 1 conv1 frame) and a ring KV cache per layer as buffers. The
    conv state is zeroed when the step starts at position 0, so a new stream needs no explicit reset; the ring cache
    derives slot positions analytically and needs none either.
    """

    def __init__(self, encoder: Encoder, adapter: Adapter, layout: str, max_enc_len: int | None = None,
                 cache_dtype: torch.dtype | None = None):
        super().__init__()
        args = encoder.args
        self.encoder, self.adapter = encoder, adapter
        self.window = max_enc_len or args.sliding_window
        dtype = encoder.norm.weight.dtype
        self.caches = nn.ModuleList([
            KVCache(ring_slots(self.window), args.n_heads, args.head_dim, self.window, ring=True, layout=layout,
                    dtype=dtype, storage_dtype=cache_dtype)
            for _ in range(args.n_layers)
        ])
        self.register_buffer("conv1_state", torch.zeros(1, args.num_mel_bins, CONV1_LEFT_PAD, dtype=dtype),
                             persistent=False)
        self.register_buffer("conv2_state", torch.zeros(1, args.dim, CONV2_LEFT_PAD, dtype=dtype), persistent=False)

    def forward(self, mel_chunk: torch.Tensor, enc_positions: torch.Tensor) -> torch.Tensor:
        encoder = self.encoder
        mel_chunk = mel_chunk.to(self.conv1_state.dtype)
        keep = (enc_positions[:1] != 0).to(self.conv1_state.dtype)  # 0 at a stream's first step
        conv1_in = torch.cat([self.conv1_state * keep, mel_chunk], dim=2)
        conv1_out = F.gelu(encoder.conv_layers[0].conv(conv1_in))
        conv2_in = torch.cat([self.conv2_state * keep, conv1_out], dim=2)
        x = F.gelu(encoder.conv_layers[1].conv(conv2_in)).transpose(1, 2)
        self.conv1_state.copy_(mel_chunk[:, :, -CONV1_LEFT_PAD:])
        self.conv2_state.copy_(conv1_out[:, :, -CONV2_LEFT_PAD:])

        cos, sin = rope_cos_sin(enc_positions, encoder.inv_freq)
        mask = self.caches[0].mask(enc_positions)
        for layer, cache in zip(encoder.layers, self.caches):
            def attend(q, k, v, cache=cache):
                return cache.attend(q, k, v, enc_positions, mask)

            x = layer(x, cos, sin, attend)
        return self.adapter(encoder.norm(x))
