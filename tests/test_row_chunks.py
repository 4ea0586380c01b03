"""Every matrix is quantized a small block of rows at a time (faster, and less peak memory at export): the integers,
scales and outputs are exactly those of quantizing the whole matrix at once."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchao.quantization.quant_api import quantize_

from voxtral_export.quantize import embedding_config, linear_config
from voxtral_export.heap import MMAP_THRESHOLD_BYTES
from voxtral_export.row_chunks import CHUNK_BYTES, quantize_in_row_chunks, rows_per_chunk


@pytest.mark.parametrize("kind, scheme, group_size", [
    ("linear", "8da4w", 32), ("linear", "8da4w", 0), ("linear", "8da8w", 0), ("linear", "4w", 32),
    ("embedding", "8w", 0), ("embedding", "8w", 32), ("linear with bias", "8da4w", 0), ("linear with bias", "8w", 0),
])
def test_row_chunks_equal_the_whole_matrix(kind, scheme, group_size):
    torch.manual_seed(0)
    weight = torch.randn(300, 64, dtype=torch.bfloat16)  # 300 rows: the last chunk is a short one

    def make() -> nn.Module:
        if kind == "embedding":
            return nn.Embedding(300, 64)
        return nn.Linear(64, 300, bias=kind == "linear with bias")

    whole, chunked = make(), make()
    if kind == "linear with bias":
        chunked.bias = nn.Parameter(whole.bias.detach().clone(), requires_grad=False)
    whole.weight = nn.Parameter(weight.float(), requires_grad=False)
    chunked.weight = nn.Parameter(weight.clone(), requires_grad=False)  # bf16, as loaded: upcast chunk by chunk
    config = embedding_config(scheme, group_size) if kind == "embedding" else linear_config(scheme, group_size)
    quantize_(whole, config, filter_fn=lambda m, fqn: True)
    quantize_in_row_chunks(chunked, config, torch.float32, rows=128)
    a, b = whole.weight, chunked.weight
    for name in ("qdata", "scale", "zero_point"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (a.block_size, a.dtype, a.activation_quantization) == (b.block_size, b.dtype, b.activation_quantization)
    x = torch.tensor([[1, 5, 299]]) if kind == "embedding" else torch.randn(3, 64)
    assert torch.equal(whole(x), chunked(x))


def test_a_block_of_rows_stays_under_the_mmap_threshold():
    """HQQ's fp32 temporaries of one block reuse the heap (heap.py maps anything larger afresh) and stay in cache."""
    for width in (1, 1280, 3072, 9216, CHUNK_BYTES):
        rows = rows_per_chunk(width)
        assert rows >= 1 and (rows == 1 or rows * width * 4 <= CHUNK_BYTES)
    assert CHUNK_BYTES < MMAP_THRESHOLD_BYTES
