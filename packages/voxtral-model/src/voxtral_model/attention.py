"""KV caches and attention, swappable per backend.

Two layouts:
- "custom" (XNNPACK, portable): caches are [1, slots, heads, head_dim], updated by ExecuTorch's
  `torch.ops.llama.update_cache[_with_indices]` and read by `voxtral::ring_attention` (ring caches) or
  `torch.ops.llama.custom_sdpa` (flat caches; the llama ops must be registered by importing
  `executorch.extension.llm.custom_ops.custom_ops`).
- "standard" (Metal, and any plain PyTorch use): caches are [1, heads, slots, head_dim], updated with `index_copy_`
  and read with `F.scaled_dot_product_attention`; masks are additive, finite and in the model dtype.

Two geometries:
- flat: slot = position, bounded by the number of slots (offline decoder, `max_seq_len`).
- ring: slots = window + RING_CHUNK, slot = position mod slots. Keys are written before the queries attend, so a
  chunk's own writes must not evict keys still inside an earlier query's window: a chunk of S positions evicts the
  S oldest slots, which is safe while S <= slots - window + 1, so calls take at most RING_CHUNK positions. Every call
  scans all slots, so the ring is kept barely larger than the window. Which position a slot holds is derived from
  the newest position alone (no stored state), so a stream is unbounded and a new stream starting at position 0
  needs no reset: stale slots come out negative, masked.

Ring caches with the custom layout are read by `voxtral::ring_attention` (ring_attention.py): one operator whose
runtime kernel streams each KV head's slots once for all the query rows that use them, which is what bounds a
streaming step. A cache may store a narrower type than the model computes in (`storage_dtype`, e.g. bfloat16 ring
caches: half the bytes a step scans); keys and values are rounded to it when written and widened when read. Flat caches with a window (offline decoders longer than the window) use `custom_sdpa` with each KV
head's query heads folded into the rows (n_rep x S rows against n_kv_heads heads), so each cache is read once per
call rather than once per query head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ring_attention import ring_attention

LAYOUTS = ("custom", "standard")
STANDARD_MASK_VALUE = -1e9  # finite: -inf produced NaNs in Metal's attention
RING_CHUNK = 64  # longest call into a ring cache: the 39-token prompt prefill, then 1 (decoder) or 4 (encoder)


def ring_slots(window: int) -> int:
    """Slots of a ring cache for a `window`-position attention span and calls of up to RING_CHUNK positions."""
    return window + RING_CHUNK


def require_custom_ops() -> None:
    """Registers ExecuTorch's llama custom ops, or explains how to get them."""
    try:
        from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401
    except ImportError as e:
        raise RuntimeError(
            "the 'custom' attention layout needs ExecuTorch's custom ops: install executorch "
            "(pip install executorch==1.5.1) or build the model with layout='standard'"
        ) from e


def attention_mask(
    positions: torch.Tensor, n_slots: int, window: int, ring: bool, dtype: torch.dtype, masked_value: float
) -> torch.Tensor:
    """Additive mask (S, n_slots): query at positions[i] sees the slot holding key position p iff 0 <= q - p < window."""
    slots = torch.arange(n_slots, dtype=torch.int64)
    if ring:
        newest = positions[-1:]
        slot_pos = slots + torch.div(newest - slots, n_slots, rounding_mode="floor") * n_slots
    else:
        slot_pos = slots
    delta = positions[:, None] - slot_pos[None, :]
    visible = (delta >= 0) & (delta < window) & (slot_pos[None, :] >= 0)
    zeros = torch.zeros((), dtype=dtype)
    return torch.where(visible, zeros, torch.full((), masked_value, dtype=dtype))


class KVCache(nn.Module):
    """Per-layer key/value cache (flat or ring) in one of the two layouts."""

    def __init__(self, n_slots: int, n_kv_heads: int, head_dim: int, window: int, ring: bool, layout: str,
                 dtype: torch.dtype = torch.float32, storage_dtype: torch.dtype | None = None):
        """`dtype` is the model's (export recasts it with the model); `storage_dtype`, when given, is the element
        type the cache keeps whatever the model's: keys and values are rounded to it when written."""
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown attention layout {layout!r}; expected one of {LAYOUTS}")
        if layout == "custom":
            require_custom_ops()
        self.n_slots, self.window, self.ring, self.layout = n_slots, window, ring, layout
        self.shape = (1, n_slots, n_kv_heads, head_dim) if layout == "custom" else (1, n_kv_heads, n_slots, head_dim)
        self.dtype, self.storage_dtype = dtype, storage_dtype
        self.init_buffers()

    @property
    def cache_dtype(self) -> torch.dtype:
        return self.storage_dtype or self.dtype

    def init_buffers(self) -> None:
        """(Re)creates the empty cache; also materializes it after loading a model built on the meta device."""
        self.register_buffer("k_cache", torch.zeros(self.shape, dtype=self.cache_dtype), persistent=False)
        self.register_buffer("v_cache", torch.zeros(self.shape, dtype=self.cache_dtype), persistent=False)

    def _stored(self, x: torch.Tensor) -> torch.Tensor:
        """Keys or values as the cache stores them (rounded to a narrower cache type, e.g. bfloat16)."""
        return x if x.dtype == self.cache_dtype else x.to(self.cache_dtype)

    def mask(self, positions: torch.Tensor) -> torch.Tensor | None:
        """The mask for queries at `positions`, shared by every layer of a stack; None = plain causal (fast path)."""
        if self.layout == "custom":
            if not self.ring and self.window >= self.n_slots:
                return None
            return attention_mask(positions, self.n_slots, self.window, self.ring, torch.float32, float("-inf"))
        return attention_mask(positions, self.n_slots, self.window, self.ring, self.dtype, STANDARD_MASK_VALUE)

    def _grouped_sdpa(self, q: torch.Tensor, mask: torch.Tensor, start_pos) -> torch.Tensor:
        """custom_sdpa with each KV head's query heads folded into the rows (see the module docstring)."""
        bsz, seq_len, n_heads, head_dim = q.shape
        n_kv = self.shape[2]
        n_rep = n_heads // n_kv
        if n_rep == 1:
            y = torch.ops.llama.custom_sdpa(q, self.k_cache, self.v_cache, start_pos, mask, 0.0, False)
            return y.reshape(bsz, seq_len, n_heads * head_dim)
        # Row r * S + s of KV head g is query head g * n_rep + r at position s.
        folded = q.reshape(bsz, seq_len, n_kv, n_rep, head_dim).permute(0, 3, 1, 2, 4).reshape(
            bsz, n_rep * seq_len, n_kv, head_dim)
        y = torch.ops.llama.custom_sdpa(folded, self.k_cache, self.v_cache, start_pos, mask.repeat(n_rep, 1),
                                        0.0, False)
        y = y.reshape(bsz, n_rep, seq_len, n_kv, head_dim).permute(0, 2, 3, 1, 4)
        return y.reshape(bsz, seq_len, n_heads * head_dim)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
               mask: torch.Tensor | None) -> torch.Tensor:
        """Writes k, v (B, S, Hkv, D) at `positions`, attends q (B, S, H, D) over the cache -> (B, S, H*D)."""
        bsz, seq_len, n_heads, head_dim = q.shape
        if self.layout == "custom":
            start_pos = positions[0].item()
            torch._check(start_pos >= 0)
            if self.ring:
                slots = torch.remainder(positions, self.n_slots).reshape(1, seq_len)
                torch.ops.llama.update_cache_with_indices(self._stored(k), self.k_cache, start_pos, slots)
                torch.ops.llama.update_cache_with_indices(self._stored(v), self.v_cache, start_pos, slots)
            else:
                torch._check(start_pos + seq_len <= self.n_slots)
                torch.ops.llama.update_cache(k, self.k_cache, start_pos)
                torch.ops.llama.update_cache(v, self.v_cache, start_pos)
            if mask is None:
                y = torch.ops.llama.custom_sdpa(q, self.k_cache, self.v_cache, start_pos, None, 0.0, True)
                return y.reshape(bsz, seq_len, n_heads * head_dim)
            if self.ring:
                y = ring_attention(q, self.k_cache, self.v_cache, mask)
                return y.reshape(bsz, seq_len, n_heads * head_dim)
            return self._grouped_sdpa(q, mask, start_pos)
        slots = torch.remainder(positions, self.n_slots) if self.ring else positions
        self.k_cache.index_copy_(2, slots, self._stored(k).transpose(1, 2))
        self.v_cache.index_copy_(2, slots, self._stored(v).transpose(1, 2))
        k_all, v_all = self.k_cache.to(q.dtype), self.v_cache.to(q.dtype)  # no-ops unless the cache is narrower
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k_all, v_all, attn_mask=mask, enable_gqa=True)
        return y.transpose(1, 2).reshape(bsz, seq_len, n_heads * head_dim)


def windowed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, block: int) -> torch.Tensor:
    """Causal attention limited to the last `window` keys, over a whole sequence, in memory linear in its length.

    q, k, v: (T, H, D) with T a multiple of `block`. Queries of block b can only see keys of the `lookback`
    preceding blocks and their own, so each block attends over (lookback + 1) * block keys with one shared mask.
    Missing blocks before the start are zeros, masked off. Returns (T, H, D).
    """
    seq_len, n_heads, head_dim = q.shape
    n_blocks = seq_len // block
    lookback = -(-(window - 1) // block)
    span = (lookback + 1) * block
    qb = q.reshape(n_blocks, block, n_heads, head_dim).transpose(1, 2)

    def gather_blocks(x: torch.Tensor) -> torch.Tensor:
        blocks = x.reshape(n_blocks, block, n_heads, head_dim)
        padded = torch.cat([blocks.new_zeros(lookback, block, n_heads, head_dim), blocks], dim=0)
        keys = torch.cat([padded[j : j + n_blocks] for j in range(lookback + 1)], dim=1)
        return keys.transpose(1, 2)  # (n_blocks, H, span, D)

    # Query r of a block sits at offset lookback*block + r of its key span; key c is visible iff 0 <= (that - c) < W.
    distance = (lookback * block + torch.arange(block))[:, None] - torch.arange(span)[None, :]
    visible = (distance >= 0) & (distance < window)  # (block, span)
    # Keys before position 0 (the zero blocks) must stay hidden: key c of block b is at absolute (b - lookback)*block + c.
    absolute = (torch.arange(n_blocks)[:, None] - lookback) * block + torch.arange(span)[None, :]
    visible = visible[None] & (absolute >= 0)[:, None, :]  # (n_blocks, block, span)
    # Plain matmul/softmax rather than F.scaled_dot_product_attention: the fused CPU kernel returns another memory
    # layout than its decomposition, which breaks the reshape below once the exported graph is lowered.
    scores = torch.matmul(qb, gather_blocks(k).transpose(-1, -2)) * head_dim**-0.5
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    y = torch.matmul(torch.softmax(scores.float(), dim=-1).to(q.dtype), gather_blocks(v))
    return y.transpose(1, 2).reshape(seq_len, n_heads, head_dim)
