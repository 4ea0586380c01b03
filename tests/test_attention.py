"""KV caches and attention: both layouts agree, ring caches behave like sliding-window attention past their size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from voxtral_model.attention import KVCache, windowed_attention


def _naive(q, k, v, window):
    """Reference: full (T, T) masked attention, q/k/v (T, H, D), k/v possibly fewer heads (GQA)."""
    t = q.shape[0]
    d = torch.arange(t)[:, None] - torch.arange(t)[None, :]
    mask = (d >= 0) & (d < window)
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    y = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask)
    return y.transpose(0, 1)


@pytest.mark.parametrize("seq_len", [16, 48])
def test_blocked_windowed_attention_matches_full_mask(seq_len):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(seq_len, 3, 8, generator=g) for _ in range(3))
    for window, block in [(8, 8), (8, 4), (7, 16), (10, 4)]:
        assert torch.allclose(windowed_attention(q, k, v, window, block), _naive(q, k, v, window), atol=1e-5)


@pytest.mark.parametrize("layout", ["standard", "custom"])
@pytest.mark.parametrize("ring", [True, False])
def test_cache_attention_matches_sliding_window_reference(layout, ring):
    """Chunks of varying size (prefill then single steps) driven well past a ring of window + longest chunk."""
    window, n_heads, n_kv, d = 6, 4, 2, 8
    total = 40
    chunks = [5, 1, 3, 6, 1, 1, 2] + [1] * 21
    n_slots = window + max(chunks) if ring else total
    cache = KVCache(n_slots, n_kv, d, window, ring=ring, layout=layout)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(total, n_heads, d, generator=g)
    k = torch.randn(total, n_kv, d, generator=g)
    v = torch.randn(total, n_kv, d, generator=g)
    expected = _naive(q, k, v, window)
    pos = 0
    for size in chunks:
        positions = torch.arange(pos, pos + size)
        sl = slice(pos, pos + size)
        y = cache.attend(q[None, sl], k[None, sl], v[None, sl], positions, cache.mask(positions))
        assert torch.allclose(y[0].reshape(size, n_heads, d), expected[sl], atol=1e-5), (pos, size)
        pos += size
    assert pos == total
