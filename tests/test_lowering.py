"""Lowering's in-place topological sort keeps torch.fx's order, so programs are byte for byte what upstream gives."""

from __future__ import annotations

import torch
from torch.fx.passes.utils.fuser_utils import legalize_graph

from voxtral_export.lower import legalize_in_place


def out_of_order_graph() -> torch.fx.GraphModule:
    """A small traced graph whose nodes are then moved out of topological order (as cutting out a partition does)."""

    class Net(torch.nn.Module):
        def forward(self, x, y):
            a = x + 1
            b = torch.relu(y) * 2
            c = a @ b.t()
            return c.sum() + a.mean(), b - 1

    gm = torch.fx.symbolic_trace(Net())
    nodes = [n for n in gm.graph.nodes if n.op == "call_function" or n.op == "call_method"]
    nodes[-1].append(nodes[0])  # the first op now sits after the last: its users come before it
    return gm


def test_in_place_sort_gives_torch_fx_order_without_rebuilding_the_graph():
    gm = out_of_order_graph()
    reference = legalize_graph(out_of_order_graph())
    graph_before = gm.graph
    legalize_in_place(gm)
    assert gm.graph is graph_before  # nodes moved, graph (and generated code) untouched
    assert [n.name for n in gm.graph.nodes] == [n.name for n in reference.graph.nodes]
    gm.recompile()
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    for got, want in zip(gm(x, y), reference(x, y)):
        assert torch.equal(got, want)


def quantized_linear_programs() -> dict:
    """A small 8da4w linear (the recipe's kind of weight) exported as one method."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis

    torch.manual_seed(0)
    linear = torch.nn.Sequential(torch.nn.Linear(64, 32, bias=False))
    quantize_(linear, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerAxis(0)))
    with torch.no_grad():
        return {"forward": torch.export.export(linear, (torch.randn(2, 64),), strict=True)}


def test_xnnpack_preprocess_copies_share_the_weights_and_give_the_same_program(monkeypatch):
    import contextlib

    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend
    from executorch.exir import to_edge

    from voxtral_export import lower

    edge = to_edge(quantized_linear_programs()).exported_program()
    weights = [t for t in edge.state_dict.values()] + [t for t in edge.constants.values()]
    with lower.xnnpack_preprocess_sharing_weights():
        copied = XnnpackBackend.copy_exported_program_for_preprocess(edge, [])
    assert copied.graph is not edge.graph and copied.state_dict is not edge.state_dict
    shared = list(copied.state_dict.values()) + list(copied.constants.values())
    assert weights and all(a is b for a, b in zip(weights, shared))
    # Leaving the block restores ExecuTorch's own deep copy.
    assert XnnpackBackend.copy_exported_program_for_preprocess(edge, []).graph is not edge.graph
    assert all(a is not b for a, b in zip(weights, XnnpackBackend.copy_exported_program_for_preprocess(edge, [])
                                       .state_dict.values()))

    sharing = lower.lower_to_executorch(quantized_linear_programs(), "xnnpack", {})
    monkeypatch.setattr(lower, "xnnpack_preprocess_sharing_weights", contextlib.nullcontext)
    copying = lower.lower_to_executorch(quantized_linear_programs(), "xnnpack", {})
    assert sharing == copying
