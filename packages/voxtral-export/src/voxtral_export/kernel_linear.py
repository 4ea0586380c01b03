"""Quantized linears computed by ExecuTorch's own quantized kernels, for where the XNNPACK delegate cannot take them.

ExecuTorch 1.5.1 has two gaps for torchao's quantized linears (both reproduced with one linear layer and on the tiny model):
- XNNPACK lowers weight-only (`4w`, `8w`) linears but drops their scales: the output is `1/scale` times too large.
- The portable backend has no kernels for torchao's `dequantize_affine` / `choose_qparams_affine` ops.

Both are served by the same replacement. After torchao has chosen the quantized weights (its configs, its HQQ
algorithm), each such linear keeps them as int8 values (int4 values for 4-bit schemes) with their symmetric,
zero-point-free scales, exactly what torchao's `hqq_scale_only` choice gives, and computes
`linear(x, dequantize_per_channel(q, scales))` with the `quantized_decomposed` op that ExecuTorch runs in its quantized
kernels (groups are rows of a (out x groups, group size) view, so one op serves per-channel and per-group scales).
The float weight exists only for the call, in the planned memory; on XNNPACK the matmul itself is still delegated.
Dynamic-activation schemes first round the activations per token to int8 with the `quantized_decomposed` per-token
ops, which choose the same parameters as torchao's `int8_asym_per_token` (eager, the result equals torchao's; the
runtime's C++ kernels round a few activations differently, as XNNPACK's do). ExecuTorch's fused
`mixed_linear` kernel would skip the float weight, but it logs an error line on every call with group scales.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

def register_ops() -> None:
    """Defines the `quantized_decomposed` ops with their eager and meta kernels (torch) and their out variants
    (ExecuTorch's quantized kernels), which lowering needs."""
    import executorch.kernels.quantized  # noqa: F401
    import torch.ao.quantization.fx._decomposed  # noqa: F401


class KernelQuantizedLinear(nn.Module):
    """y = x W^T (+ b) with W stored as int8 values times float scales, one scale per `group_size` inputs."""

    def __init__(self, qdata: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None,
                 dynamic_activations: bool):
        super().__init__()
        self.out_features, self.in_features = qdata.shape
        self.dynamic_activations = dynamic_activations
        self.register_buffer("qdata", qdata.to(torch.int8).contiguous())
        self.register_buffer("scales", scales.float().reshape(self.out_features, -1).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_torchao(cls, linear: nn.Linear) -> KernelQuantizedLinear:
        """Takes a linear quantized by torchao's IntxWeightOnlyConfig or Int8DynamicActivationIntxWeightConfig."""
        weight = linear.weight
        if not hasattr(weight, "qdata") or not hasattr(weight, "scale"):
            raise TypeError(f"expected a torchao IntxUnpackedToInt8Tensor weight, got {type(weight).__name__}")
        if bool((weight.zero_point != 0).any()):
            raise ValueError("quantized weights with a zero point are not supported (torchao's hqq_scale_only has none)")
        activation = getattr(weight, "activation_quantization", None)
        if activation not in (None, "int8_asym_per_token"):
            raise ValueError(f"unsupported activation quantization {activation!r}")
        return cls(weight.qdata, weight.scale, linear.bias, dynamic_activations=activation is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        if self.dynamic_activations:
            scale, zero = torch.ops.quantized_decomposed.choose_qparams_per_token_asymmetric(rows, torch.int8)
            q = torch.ops.quantized_decomposed.quantize_per_token(rows, scale, zero, -128, 127, torch.int8)
            rows = torch.ops.quantized_decomposed.dequantize_per_token(q, scale, zero, -128, 127, torch.int8,
                                                                       torch.float32)
        grouped = self.qdata.view(self.scales.numel(), -1)
        weight = torch.ops.quantized_decomposed.dequantize_per_channel(
            grouped, self.scales.view(-1), None, 0, -128, 127, torch.int8).view(self.out_features, self.in_features)
        y = F.linear(rows, weight, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def replace_quantized_linears(root: nn.Module) -> int:
    """Swaps every torchao-quantized nn.Linear under `root` for a KernelQuantizedLinear. Returns how many."""
    register_ops()
    swapped = 0
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and hasattr(child.weight, "qdata"):
                setattr(parent, name, KernelQuantizedLinear.from_torchao(child))
                swapped += 1
    return swapped
