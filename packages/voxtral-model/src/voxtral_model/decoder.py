"""Mistral text decoder with delay-conditioned adaptive RMS norm (docs/spec.md §4.6-§4.8).

Per position the input is the sum of the audio embedding and the token embedding (the caller adds them). Attention
is GQA over a KV cache: flat (`max_seq_len` slots) for offline programs, ring (window + RING_CHUNK slots) for streams of any length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import KVCache, ring_slots
from .config import DecoderArgs
from .layers import PreNormBlock, RMSNorm, SwiGLU, apply_rope, rope_cos_sin, rope_inv_freq, time_embedding


class DecoderAttention(nn.Module):
    def __init__(self, args: DecoderArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache,
                positions: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        bsz, seq_len, _ = x.shape
        q = apply_rope(self.wq(x).view(bsz, seq_len, self.n_heads, self.head_dim), cos, sin)
        k = apply_rope(self.wk(x).view(bsz, seq_len, self.n_kv_heads, self.head_dim), cos, sin)
        v = self.wv(x).view(bsz, seq_len, self.n_kv_heads, self.head_dim)
        return self.wo(cache.attend(q, k, v, positions, mask))


class DecoderLayer(PreNormBlock):
    def __init__(self, args: DecoderArgs):
        super().__init__(args.dim, args.norm_eps, DecoderAttention(args),
                         SwiGLU(args.dim, args.hidden_dim, down_bias=False))
        # Checkpoint names: ada_rms_norm_t_cond.0 (down to the bottleneck) and .2 (back up); .1 is the GELU.
        self.ada_rms_norm_t_cond = nn.Sequential(
            nn.Linear(args.dim, args.ada_t_cond_dim, bias=False),
            nn.GELU(),
            nn.Linear(args.ada_t_cond_dim, args.dim, bias=False),
        )

        self.register_buffer("ffn_scale", None, persistent=False)

    def fold_time_conditioning(self, t_cond: torch.Tensor) -> None:
        """The ada-norm scale depends only on the delay: compute it once (in fp32) and drop its projections."""
        ada = self.ada_rms_norm_t_cond
        with torch.no_grad():
            scale = 1 + ada.float()(t_cond.float()[None])
        self.ffn_scale = scale.to(self.ffn_norm.weight.dtype)
        self.ada_rms_norm_t_cond = None

    def forward(self, x: torch.Tensor, t_cond: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache,
                positions: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, cache, positions, mask)
        scale = self.ffn_scale if self.ffn_scale is not None else 1 + self.ada_rms_norm_t_cond(t_cond[None])
        return x + self.feed_forward(self.ffn_norm(x) * scale)


class Decoder(nn.Module):
    """input_embeds (1, S, dim) + positions (S,) -> logits (1, S, vocab), or (1, 1, vocab) of the last position;
    keys/values stay in the caches."""

    def __init__(self, args: DecoderArgs, delay_tokens: int, layout: str, max_seq_len: int,
                 streaming: bool, sliding_window: int | None = None, dtype: torch.dtype = torch.float32,
                 ring_cache_dtype: torch.dtype | None = None):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList([DecoderLayer(args) for _ in range(args.n_layers)])
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.output.weight = self.tok_embeddings.weight  # tied head
        window = min(sliding_window or args.sliding_window, args.sliding_window)
        n_slots = ring_slots(window) if streaming else max_seq_len
        self.caches = nn.ModuleList([
            KVCache(n_slots, args.n_kv_heads, args.head_dim, window, ring=streaming, layout=layout, dtype=dtype,
                    storage_dtype=ring_cache_dtype if streaming else None)
            for _ in range(args.n_layers)
        ])
        self.max_seq_len, self.window, self.streaming = max_seq_len, window, streaming
        self.delay_tokens, self.dtype = delay_tokens, dtype
        self.init_buffers()

    def init_buffers(self) -> None:
        args = self.args
        self.register_buffer("inv_freq", rope_inv_freq(args.head_dim, args.rope_theta), persistent=False)
        self.register_buffer("t_cond", time_embedding(self.delay_tokens, args.dim).to(self.dtype), persistent=False)

    def fold_time_conditioning(self) -> None:
        """Precomputes every layer's ada-norm scale for this model's delay (export does this: smaller, faster)."""
        for layer in self.layers:
            layer.fold_time_conditioning(self.t_cond)

    def untie_output(self) -> None:
        """Gives the head its own copy of the embedding so each can be quantized its own way."""
        self.output.weight = nn.Parameter(self.tok_embeddings.weight.detach().clone())

    def forward(self, input_embeds: torch.Tensor, positions: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """`last_only`: logits of the last position only, (1, 1, vocab): all a sampler needs, and the head is the
        decoder's largest matrix (131072 x 3072), so a 39-row prefill otherwise spends a third of its time there."""
        x = input_embeds.to(self.norm.weight.dtype)
        cos, sin = rope_cos_sin(positions, self.inv_freq)
        mask = self.caches[0].mask(positions)
        for layer, cache in zip(self.layers, self.caches):
            x = layer(x, self.t_cond, cos, sin, cache, positions, mask)
        if last_only:
            x = x[:, -1:]
        return self.output(self.norm(x))
