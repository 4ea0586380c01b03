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
