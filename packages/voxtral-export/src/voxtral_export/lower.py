"""Lowering exported programs to an ExecuTorch program for one backend."""

from __future__ import annotations

import time
from collections.abc import Callable

from torch.export import ExportedProgram


def partitioners(backend: str) -> list:
    """Per-method partitioners: XNNPACK takes the dynamically quantized linears first, then everything it can."""
    if backend == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
            XnnpackDynamicallyQuantizedPartitioner,
            XnnpackPartitioner,
        )

        return [XnnpackDynamicallyQuantizedPartitioner(), XnnpackPartitioner()]
    if backend == "portable":
        return []
    if backend == "metal":  # only reachable on macOS (validated before)
        from executorch.backends.apple.metal.metal_partitioner import MetalPartitioner

        return [MetalPartitioner([])]
    raise ValueError(f"unknown backend {backend!r}")


def lower_to_executorch(programs: dict[str, ExportedProgram], backend: str, constant_methods: dict,
                        progress: Callable[[str], None] = lambda _: None) -> bytes:
    """Edge dialect, backend delegation, memory planning, serialisation -> the .pte bytes. At full size each of the
    two steps takes tens of minutes; `progress` hears when each one ends."""
    started = time.monotonic()
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass

    edge = to_edge_transform_and_lower(
        programs,
        partitioner={name: partitioners(backend) for name in programs},
        compile_config=EdgeCompileConfig(_check_ir_validity=False, _skip_dim_order=True),
        constant_methods=constant_methods,
    )
    progress(f"edge dialect and {backend} delegation done in {time.monotonic() - started:.0f} s")
    started = time.monotonic()
    program = edge.to_executorch(ExecutorchBackendConfig(
        extract_delegate_segments=True,
        do_quant_fusion_and_const_prop=True,
        memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
    ))
    buffer = program.buffer
    progress(f"memory planning and serialisation done in {time.monotonic() - started:.0f} s")
    return buffer
