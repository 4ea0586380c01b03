"""Quantizing the two vocabulary-sized matrices (output head and embedding, 131072 x 3072) a block of rows at a time.

torchao quantizes a weight in one piece: upcast to the export dtype, then HQQ's search over the whole matrix, whose
temporaries are several times its fp32 size, about 9 GiB for the head and the embedding, which is what set the full
export's peak memory. Every scale of the schemes used here belongs to one row (one per output channel, or per group
along the row), so quantizing blocks of rows separately gives exactly the same integers and scales; the pieces are
then joined into one torchao tensor, so the exported graph is unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

ROWS_PER_CHUNK = 8192  # 8192 x 3072 fp32 = 96 MiB upcast per piece


def quantize_in_row_chunks(module: nn.Linear | nn.Embedding, config, dtype: torch.dtype,
                           rows_per_chunk: int = ROWS_PER_CHUNK) -> None:
    """Quantizes `module.weight` (rows = output channels or vocabulary entries) in place with the torchao `config`,
    a block of rows at a time; the weight is upcast to `dtype` one block at a time."""
    from torchao.quantization.quant_api import quantize_
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import IntxUnpackedToInt8Tensor

    weight = module.weight.detach()
    pieces = []
    for start in range(0, weight.shape[0], rows_per_chunk):
        rows = weight[start : start + rows_per_chunk].to(dtype)
        piece = _like(module, rows)
        quantize_(piece, config, filter_fn=lambda m, fqn: isinstance(m, (nn.Linear, nn.Embedding)))
        q = piece.weight
        if not isinstance(q, IntxUnpackedToInt8Tensor):
            raise TypeError(f"row-chunked quantization expects torchao's IntxUnpackedToInt8Tensor, got {type(q)}")
        pieces.append(q)
        del rows, piece
    first = pieces[0]
    joined = IntxUnpackedToInt8Tensor(
        torch.cat([p.qdata for p in pieces]), torch.cat([p.scale for p in pieces]),
        torch.cat([p.zero_point for p in pieces]), first.target_dtype, first.block_size, first.dtype,
        first.activation_quantization)
    module.weight = nn.Parameter(joined, requires_grad=False)


def _like(module: nn.Linear | nn.Embedding, rows: torch.Tensor) -> nn.Module:
    """A module of the same kind holding `rows` as its weight (no bias: neither matrix has one)."""
    if isinstance(module, nn.Embedding):
        piece = nn.Embedding(rows.shape[0], rows.shape[1], device="meta")
    else:
        if module.bias is not None:
            raise ValueError("row-chunked quantization of a linear with a bias is not supported")
        piece = nn.Linear(rows.shape[1], rows.shape[0], bias=False, device="meta")
    piece.weight = nn.Parameter(rows, requires_grad=False)
    return piece
