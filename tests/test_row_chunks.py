"""The output head and the embedding are quantized a block of rows at a time (less peak memory at export): the
integers, scales and outputs are exactly those of quantizing the whole matrix at once."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchao.quantization.quant_api import quantize_

from voxtral_export.quantize import embedding_config, linear_config
from voxtral_export.row_chunks import quantize_in_row_chunks


@pytest.mark.parametrize("kind, scheme, group_size", [
    ("linear", "8da4w", 32), ("linear", "8da4w", 0), ("linear", "8da8w", 0), ("linear", "4w", 32),
    ("embedding", "8w", 0), ("embedding", "8w", 32),
])
def test_row_chunks_equal_the_whole_matrix(kind, scheme, group_size):
    torch.manual_seed(0)
    weight = torch.randn(300, 64, dtype=torch.bfloat16)  # 300 rows: the last chunk is a short one

    def make() -> nn.Module:
        return nn.Linear(64, 300, bias=False) if kind == "linear" else nn.Embedding(300, 64)

    whole, chunked = make(), make()
    whole.weight = nn.Parameter(weight.float(), requires_grad=False)
    chunked.weight = nn.Parameter(weight.clone(), requires_grad=False)  # bf16, as loaded: upcast chunk by chunk
    config = linear_config(scheme, group_size) if kind == "linear" else embedding_config(scheme, group_size)
    quantize_(whole, config, filter_fn=lambda m, fqn: True)
    quantize_in_row_chunks(chunked, config, torch.float32, rows_per_chunk=128)
    a, b = whole.weight, chunked.weight
    for name in ("qdata", "scale", "zero_point"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (a.block_size, a.dtype, a.activation_quantization) == (b.block_size, b.dtype, b.activation_quantization)
    x = torch.randn(3, 64) if kind == "linear" else torch.tensor([[1, 5, 299]])
    assert torch.equal(whole(x), chunked(x))
