"""torchao quantization of the model's linears and embedding (docs/spec.md §11), one layer at a time.

Layer by layer matters for the full model: each layer is read from the checkpoint in bf16 (its own precision, so
nothing is lost) only when its turn comes (checkpoint.LazyWeights), then upcast to the export dtype and quantized on
its own, so neither the fp32 nor the bf16 copy of the whole model ever exists. Every matrix is quantized a small block
of rows at a time (row_chunks.py: the same integers and scales, ten times faster, and no whole-matrix temporaries for
the vocabulary-sized head and embedding). Conv layers are never quantized. Linears that no delegate can run correctly
are then handed to ExecuTorch's quantized kernels (kernel_linear.py), keeping torchao's choice of quantized weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from voxtral_model.checkpoint import LazyWeights
from voxtral_model.model import VoxtralRealtime

from .heap import release_freed_memory
from .kernel_linear import KernelQuantizedLinear, replace_quantized_linears
from .options import GROUPED, ExportOptions, uses_kernel_linears
from .row_chunks import quantize_in_row_chunks


ROW_CHUNKED = ("4w", "8w", "8da4w", "8da8w")  # schemes whose weights torchao stores as IntxUnpackedToInt8Tensor


WEIGHT_ONLY = {"4w": torch.int4, "8w": torch.int8}  # scheme -> weight dtype; activations stay float
DYNAMIC_ACTIVATIONS = {"8da4w": torch.int4, "8da8w": torch.int8}  # activations quantized to int8 per token, per call


def linear_config(scheme: str, group_size: int):
    """The torchao config for a linear scheme (as the ExecuTorch example maps its flags)."""
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_api import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig

    granularity = PerGroup(group_size) if scheme in GROUPED and group_size else PerAxis(0)
    if scheme in WEIGHT_ONLY:
        return IntxWeightOnlyConfig(weight_dtype=WEIGHT_ONLY[scheme], granularity=granularity,
                                    intx_choose_qparams_algorithm="hqq_scale_only")
    if scheme in DYNAMIC_ACTIVATIONS:
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=DYNAMIC_ACTIVATIONS[scheme],
                                                     weight_granularity=granularity,
                                                     intx_choose_qparams_algorithm="hqq_scale_only")
    if scheme == "fpa4w":  # Metal only; needs torchao built with its experimental MPS kernels (macOS)
        from torchao.experimental.quant_api import UIntxWeightOnlyConfig

        return UIntxWeightOnlyConfig(group_size=group_size, bitwidth=4, uintx_choose_qparams_algorithm="hqq")
    raise ValueError(f"unknown linear quantization {scheme!r}")


def embedding_config(scheme: str, group_size: int):
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_api import IntxWeightOnlyConfig

    granularity = PerGroup(group_size) if group_size else PerAxis(0)
    if scheme != "8w":
        raise ValueError(f"unknown embedding quantization {scheme!r}")
    return IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=granularity,
                                intx_choose_qparams_algorithm="hqq_scale_only")


def _linears_fit(group_size: int | None) -> Callable[[nn.Module, str], bool]:
    def fits(module: nn.Module, fqn: str) -> bool:
        return isinstance(module, nn.Linear) and (not group_size or module.in_features % group_size == 0)

    return fits


def _encoder_units(model: VoxtralRealtime) -> Iterator[tuple[str, nn.Module]]:
    for i, layer in enumerate(model.encoder.layers):
        yield f"encoder.layers.{i}", layer
    yield "adapter", model.adapter


def _decoder_units(model: VoxtralRealtime) -> Iterator[tuple[str, nn.Module]]:
    for i, layer in enumerate(model.decoder.layers):
        yield f"decoder.layers.{i}", layer


def quantize_model(model: VoxtralRealtime, options: ExportOptions, dtype: torch.dtype,
                   progress: Callable[[str], None] = lambda _: None, weights: LazyWeights | None = None) -> list[str]:
    """Reads each unit (if `weights`: a lazily loaded model), folds its ada-norm scale, casts it to `dtype` and
    quantizes it in place, unit by unit. Returns the linears left unquantized because the group size does not
    divide their input width (validation makes this empty)."""
    skipped: list[str] = []

    def run(units: list[tuple[str, nn.Module]], scheme: str | None, group_size: int, label: str) -> None:
        for i, (name, unit) in enumerate(units):
            if weights is not None:
                weights.materialize(name)
            if label == "decoder":  # before the cast: the scale is computed in fp32
                unit.fold_time_conditioning(model.decoder.t_cond)
            unit.to(dtype)
            if scheme:
                gs = group_size if scheme in GROUPED and group_size else None
                fits = _linears_fit(gs)
                skipped.extend(f"{label}[{i}].{name}" for name, m in unit.named_modules()
                               if isinstance(m, nn.Linear) and not fits(m, name))
                config = linear_config(scheme, group_size)
                for fqn, linear in list(unit.named_modules()):
                    if fits(linear, fqn):
                        _quantize_matrix(linear, scheme, config, dtype)
                if uses_kernel_linears(options.backend, scheme):
                    replace_quantized_linears(unit)
            release_freed_memory()  # the unit's bf16 weights and fp32 temporaries
            progress(f"{label} {i + 1}/{len(units)}")

    if options.quantized:
        model.decoder.untie_output()  # embedding and head get their own formats
    run(list(_encoder_units(model)), options.qlinear_encoder, options.qlinear_encoder_group_size, "encoder")
    run(list(_decoder_units(model)), options.qlinear, options.qlinear_group_size, "decoder")
    head = model.decoder.output
    if options.qlinear:
        _quantize_matrix(head, options.qlinear, linear_config(options.qlinear, options.qlinear_group_size), dtype)
        if uses_kernel_linears(options.backend, options.qlinear):
            model.decoder.output = KernelQuantizedLinear.from_torchao(head)
    else:
        head.to(dtype)
    release_freed_memory()
    progress("output head")
    embedding = model.decoder.tok_embeddings
    if options.qembedding:
        quantize_in_row_chunks(embedding, embedding_config(options.qembedding, options.qembedding_group_size), dtype)
    else:
        embedding.to(dtype)
    release_freed_memory()
    progress("embedding")
    _cast_remaining(model, dtype)
    if weights is not None and weights.unread():
        raise RuntimeError(f"parameters never read from the checkpoint: {weights.unread()[:3]}")
    return skipped


def _quantize_matrix(module: nn.Linear, scheme: str, config, dtype: torch.dtype) -> None:
    if scheme in ROW_CHUNKED:
        quantize_in_row_chunks(module, config, dtype)
    else:
        from torchao.quantization.quant_api import quantize_

        quantize_(module, config, filter_fn=lambda m, fqn: isinstance(m, nn.Linear))


def _cast_remaining(model: VoxtralRealtime, dtype: torch.dtype) -> None:
    """Norms, convs and the dtype-bearing buffers (KV caches, t_cond); quantized layers are left alone."""
    for module in (*model.encoder.conv_layers, model.encoder.norm, model.decoder.norm):
        module.to(dtype)
    for module in model.modules():
        if hasattr(module, "init_buffers") and hasattr(module, "dtype"):
            module.dtype = dtype
            module.init_buffers()
