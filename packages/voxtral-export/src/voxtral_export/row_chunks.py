"""Quantizing a matrix a small block of rows at a time: every quantized linear, the output head and the embedding.

torchao quantizes a weight in one piece, and HQQ's scale search (up to 20 passes, each several full-size fp32
temporaries) over a 9216 x 3072 matrix is then bound by memory traffic and fresh page mappings: about 7 s for one
such matrix on the reference machine, and 20 of the full export's 36 minutes. A block of rows whose fp32 copy fits
`CHUNK_BYTES` keeps those temporaries in the core's cache and below glibc's mmap threshold (heap.py), so the same
search runs about ten times faster, and the vocabulary-sized head and embedding never need their 9 GiB of whole-matrix
temporaries. Every scale of the schemes used here belongs to one row (one per output channel, or per group along the
row), and HQQ's search of a row depends only on that row, so quantizing blocks of rows separately gives exactly the
same integers and scales; the pieces are joined into one torchao tensor, so the exported graph is unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

CHUNK_BYTES = 768 << 10  # the fp32 copy of one block: under heap.py's 1 MiB mmap threshold, and within a core's L2


def rows_per_chunk(width: int) -> int:
    """Rows of a `width`-wide matrix whose fp32 copy fits CHUNK_BYTES (at least one)."""
    return max(1, CHUNK_BYTES // (4 * width))


def quantize_in_row_chunks(module: nn.Linear | nn.Embedding, config, dtype: torch.dtype,
                           rows: int | None = None) -> None:
    """Quantizes `module.weight` (rows = output channels or vocabulary entries) in place with the torchao `config`,
    `rows` at a time (default: rows_per_chunk); each block is upcast to `dtype` on its own. A bias is left as it is,
    as torchao leaves it."""
    from torchao.quantization.quant_api import quantize_
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import IntxUnpackedToInt8Tensor

    weight = module.weight.detach()
    step = rows or rows_per_chunk(weight.shape[1])
    pieces = []
    for start in range(0, weight.shape[0], step):
        piece = _like(module, weight[start : start + step].to(dtype))
        quantize_(piece, config, filter_fn=lambda m, fqn: isinstance(m, (nn.Linear, nn.Embedding)))
        q = piece.weight
        if not isinstance(q, IntxUnpackedToInt8Tensor):
            raise TypeError(f"row-chunked quantization expects torchao's IntxUnpackedToInt8Tensor, got {type(q)}")
        pieces.append(q)
    first = pieces[0]
    joined = IntxUnpackedToInt8Tensor(
        torch.cat([p.qdata for p in pieces]), torch.cat([p.scale for p in pieces]),
        torch.cat([p.zero_point for p in pieces]), first.target_dtype, first.block_size, first.dtype,
        first.activation_quantization)
    module.weight = nn.Parameter(joined, requires_grad=False)


def _like(module: nn.Linear | nn.Embedding, rows: torch.Tensor) -> nn.Module:
    """A module of the same kind holding `rows` as its weight (no bias: quantization does not touch it)."""
    if isinstance(module, nn.Embedding):
        piece = nn.Embedding(rows.shape[0], rows.shape[1], device="meta")
    else:
        piece = nn.Linear(rows.shape[1], rows.shape[0], bias=False, device="meta")
    piece.weight = nn.Parameter(rows, requires_grad=False)
    return piece
