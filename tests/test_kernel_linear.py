"""The quantized-kernel linear computes exactly what torchao's quantized linear computes (same weights, same
activation rounding), so programs that use it can be held to eager torchao numerics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from voxtral_export.kernel_linear import KernelQuantizedLinear, replace_quantized_linears
from voxtral_export.options import uses_kernel_linears
from voxtral_export.quantize import linear_config


def quantized(scheme: str, bias: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 96, bias=bias), nn.GELU(), nn.Linear(96, 64, bias=False))
    from torchao.quantization.quant_api import quantize_

    quantize_(model, linear_config(scheme, 32))
    return model


@pytest.mark.parametrize("scheme", ["4w", "8w", "8da4w", "8da8w"])
def test_kernel_linear_equals_torchao(scheme):
    model = quantized(scheme)
    x = torch.randn(2, 5, 128)
    with torch.no_grad():
        expected = model(x)
        assert replace_quantized_linears(model) == 2
        got = model(x)
    assert all(isinstance(m, KernelQuantizedLinear) for m in (model[0], model[2]))
    assert model[0].qdata.dtype == torch.int8 and model[0].scales.shape[0] == 96
    assert (got - expected).abs().max() < 1e-6


def test_kernel_linear_keeps_the_input_dtype():
    model = quantized("8w")
    replace_quantized_linears(model)
    x = torch.randn(3, 128)
    with torch.no_grad():
        assert model(x.bfloat16()).dtype == torch.bfloat16
        assert torch.allclose(model(x.bfloat16()).float(), model(x), atol=0.05, rtol=0.05)


def test_unquantized_or_zero_point_weights_are_refused():
    with pytest.raises(TypeError, match="IntxUnpackedToInt8Tensor"):
        KernelQuantizedLinear.from_torchao(nn.Linear(4, 4))
    model = quantized("8w")
    model[0].weight.zero_point.fill_(1)
    with pytest.raises(ValueError, match="zero point"):
        KernelQuantizedLinear.from_torchao(model[0])


@pytest.mark.parametrize("backend, scheme, expected", [
    ("xnnpack", "8da4w", False), ("xnnpack", "8da8w", False), ("xnnpack", "4w", True), ("xnnpack", "8w", True),
    ("portable", "8da4w", True), ("portable", "4w", True), ("metal", "fpa4w", False), ("xnnpack", None, False),
])
def test_which_linears_use_the_quantized_kernels(backend, scheme, expected):
    assert uses_kernel_linears(backend, scheme) is expected
