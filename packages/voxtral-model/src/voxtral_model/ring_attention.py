"""`voxtral::ring_attention`: attention of a call's query rows over a ring KV cache, as one operator.

Streaming programs spend much of a step scanning ring caches, and ExecuTorch's `llama.custom_sdpa` moves each cache
about three times per call (its BLAS gemms pack every K/V block first). The runtime registers a kernel for this
operator that streams each KV head's slots once for every query row that uses it (voxtral-runtime's
`kernels/ring_attention.cpp`); here it is defined for export, with the reference math as its PyTorch implementation.

Contract (docs/pte.md, "Custom operator"): q (1, S, H, D), k_cache and v_cache (1, N, Hkv, D), mask (S, N) additive
(0 visible, -inf hidden); q and mask float32, the caches float32 or bfloat16 (read as the float32 they widen to);
query head h uses KV head h // (H // Hkv); scale 1/sqrt(D); returns (1, S, H, D) in q's dtype. Every query row must
see at least one slot.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAMESPACE = "voxtral"
OPERATOR = "ring_attention"
SCHEMA = "(Tensor q, Tensor k_cache, Tensor v_cache, Tensor mask) -> Tensor"
OUT_SCHEMA = "(Tensor q, Tensor k_cache, Tensor v_cache, Tensor mask, *, Tensor(a!) out) -> Tensor(a!)"
RING_ATTENTION_OUT = f"{NAMESPACE}::{OPERATOR}.out"  # the name programs call and the runtime registers

_library = torch.library.Library(NAMESPACE, "DEF")
_library.define(OPERATOR + SCHEMA)
_library.define(OPERATOR + ".out" + OUT_SCHEMA)


def reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The operator's meaning: scaled dot-product attention with GQA, in the caches' [slots, heads] layout, computed
    in q's dtype (bfloat16 caches are widened exactly)."""
    k, v = k_cache.to(q.dtype).transpose(1, 2), v_cache.to(q.dtype).transpose(1, 2)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask.to(q.dtype), enable_gqa=True)
    return y.transpose(1, 2).contiguous()


def _out(q, k_cache, v_cache, mask, *, out):
    out.resize_(q.shape).copy_(reference(q, k_cache, v_cache, mask))
    return out


_library.impl(OPERATOR, reference, "CompositeExplicitAutograd")
_library.impl(OPERATOR + ".out", _out, "CompositeExplicitAutograd")
_library.impl(OPERATOR, lambda q, k_cache, v_cache, mask: torch.empty_like(q), "Meta")
_library.impl(OPERATOR + ".out", lambda q, k_cache, v_cache, mask, *, out: out, "Meta")


def ring_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Calls the operator (what export records and the runtime's kernel runs)."""
    return torch.ops.voxtral.ring_attention(q, k_cache, v_cache, mask)
