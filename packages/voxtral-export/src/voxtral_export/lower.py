"""Lowering exported programs to an ExecuTorch program for one backend."""

from __future__ import annotations

import collections
import contextlib
import copy
import operator
import time
from collections.abc import Callable, Iterator

import torch
from torch.export import ExportedProgram

# torch.fx's legalize_graph moves these first among the ready nodes (runtime asserts before data-dependent ops);
# the in-place sort below keeps its exact order, so the program it gives is byte for byte the same.
_PRIORITIZED_OPS = (
    operator.add, operator.mul, operator.sub, operator.floordiv, operator.truediv, operator.mod, operator.le,
    operator.lt, operator.ge, operator.gt, operator.eq, operator.ne, torch.ops.aten.sym_constrain_range.default,
    torch.ops.aten.sym_constrain_range_for_size.default, torch.ops.aten._assert_async.msg,
    torch.ops.aten.scalar_tensor.default, torch.ops.aten._assert_scalar.default,
)


def legalize_in_place(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """torch.fx's legalize_graph (the same topological order) without rebuilding the graph.

    ExecuTorch calls legalize_graph on the whole method after cutting out each delegated partition; it copies the
    graph and assigns it back, which regenerates the Python code of the whole method and every submodule already cut
    out. With hundreds of partitions (a full-size model has over 800) that is quadratic, and most of the lowering
    time. Here the nodes are only moved; the code is generated once, when the lowered program is built."""
    graph = gm.graph
    nodes = list(graph.nodes)
    indegree = dict.fromkeys(nodes, 0)
    for node in nodes:
        for user in node.users:
            indegree[user] += 1
    ready = collections.deque(node for node in nodes if indegree[node] == 0)
    order = []
    while ready:
        node = ready.popleft()
        order.append(node)
        for user in node.users:
            indegree[user] -= 1
            if indegree[user] == 0:
                if user.op == "call_function" and user.target in _PRIORITIZED_OPS:
                    ready.appendleft(user)
                else:
                    ready.append(user)
    if len(order) < len(nodes):
        raise RuntimeError(f"graph has cycles: {[n for n in nodes if indegree[n]]}")
    previous = graph._root
    for node in order:
        if node.prev is not previous:
            previous.append(node)
        previous = node
    return gm


@contextlib.contextmanager
def fast_partitioning() -> Iterator[None]:
    """Lets ExecuTorch's delegation use `legalize_in_place` instead of torch.fx's copying legalize_graph."""
    from executorch.exir import lowered_backend_module

    original = lowered_backend_module.legalize_graph
    lowered_backend_module.legalize_graph = legalize_in_place
    try:
        yield
    finally:
        lowered_backend_module.legalize_graph = original


def _copy_sharing_tensors(cls, edge_program: ExportedProgram, compile_specs: list) -> ExportedProgram:
    """The partition's graph and dictionaries copied, its weight tensors shared."""
    tensors = {id(t): t for values in (edge_program.state_dict, edge_program.constants)
               for t in values.values() if isinstance(t, torch.Tensor)}
    return copy.deepcopy(edge_program, tensors)


@contextlib.contextmanager
def xnnpack_preprocess_sharing_weights() -> Iterator[None]:
    """ExecuTorch deep-copies every delegated partition before any is preprocessed, weights included, so lowering
    held a second copy of every quantized weight (about 4 GiB at full size) beside the first. XNNPACK's
    preprocess changes the copied graph, never a weight's data (it reads each one to pack it), so the copies may
    share the weights: ExecuTorch's CUDA backend copies the same way in its low-memory mode."""
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    original = XnnpackBackend.__dict__.get("copy_exported_program_for_preprocess")
    XnnpackBackend.copy_exported_program_for_preprocess = classmethod(_copy_sharing_tensors)
    try:
        yield
    finally:
        if original is None:
            del XnnpackBackend.copy_exported_program_for_preprocess
        else:
            XnnpackBackend.copy_exported_program_for_preprocess = original


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
                        progress: Callable[[str], None] = lambda _: None, shared_state: bool = False) -> bytes:
    """Edge dialect, backend delegation, memory planning, serialisation -> the .pte bytes. At full size each of the
    two steps takes tens of minutes; `progress` hears when each one ends. `shared_state`: the methods' mutable
    buffers (KV caches, conv state) are planned in an arena of their own, one place per buffer for every method,
    instead of among each method's activations, which the methods of one load share (docs/pte.md, "Loading")."""
    started = time.monotonic()
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass

    sharing = xnnpack_preprocess_sharing_weights() if backend == "xnnpack" else contextlib.nullcontext()
    with fast_partitioning(), sharing:
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
        emit_mutable_buffer_names=True,  # the runtime finds the state by these names (docs/pte.md, state_buffers)
        do_quant_fusion_and_const_prop=True,
        memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False, share_mutable_buffers=shared_state),
    ))
    buffer = program.buffer
    progress(f"memory planning and serialisation done in {time.monotonic() - started:.0f} s")
    return buffer
