"""voxtral::ring_attention: the runtime's C++ kernel against the operator's reference math, through ExecuTorch.

Each case exports a one-operator program and runs it with the kernel voxtral_runtime.kernels compiled, against
`ring_attention.reference` in float64. The cases cover both work splits (few rows: slot ranges merged; many rows:
KV-head tiles), GQA groups of 1-4 query heads, head sizes that leave a lone 8-lane chunk, slot counts off the
32-slot block, an unfilled ring (blocks skipped) and a window that hides the middle of the ring.
"""

from __future__ import annotations

import pytest
import torch
from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

from ptes import load_program
from voxtral_model.attention import attention_mask
from voxtral_model.ring_attention import RING_ATTENTION_OUT, reference, ring_attention
from voxtral_runtime import kernels
from voxtral_runtime.programs import ProgramError, _register_runtime_operators


class RingAttention(torch.nn.Module):
    def forward(self, q, k_cache, v_cache, mask):
        return ring_attention(q, k_cache, v_cache, mask)


def run_program(tmp_path, *inputs):
    program = to_edge_transform_and_lower(torch.export.export(RingAttention(), inputs),
                                          compile_config=EdgeCompileConfig(_check_ir_validity=False)).to_executorch()
    path = tmp_path / "ring.pte"
    path.write_bytes(program.buffer)
    return load_program(path).load_method("forward").execute(list(inputs))[0]


# (query positions S, query heads H, KV heads Hkv, head_dim D, slots N, window, first position)
CASES = {
    "decoder step (GQA 4)": (1, 8, 2, 32, 100, 80, 500),
    "encoder step (no GQA)": (4, 4, 4, 16, 70, 60, 300),
    "GQA 3, lone lane chunk": (2, 6, 2, 24, 45, 40, 90),
    "GQA 2, D 8": (3, 4, 2, 8, 33, 30, 40),
    "unfilled ring (prefill at 0)": (39, 8, 2, 32, 112, 96, 0),
    "many rows (KV-head tiles)": (64, 8, 2, 32, 120, 100, 1000),
    "many rows, no GQA, window inside the ring": (64, 5, 5, 16, 200, 40, 150),
}


@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_the_reference(tmp_path, case):
    seq, heads, kv_heads, head_dim, slots, window, start = CASES[case]
    g = torch.Generator().manual_seed(hash(case) % 1000)
    q = torch.randn(1, seq, heads, head_dim, generator=g)
    k = torch.randn(1, slots, kv_heads, head_dim, generator=g)
    v = torch.randn(1, slots, kv_heads, head_dim, generator=g)
    mask = attention_mask(torch.arange(start, start + seq), slots, window, True, torch.float32, float("-inf"))
    assert torch.isinf(mask).any() and (mask == 0).all(dim=1).logical_not().all()  # every row hides something
    out = run_program(tmp_path, q, k, v, mask)
    expect = reference(q.double(), k.double(), v.double(), mask.double())
    assert out.shape == q.shape
    assert (out.double() - expect).abs().max() < 2e-5


def test_eager_operator_is_the_reference():
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 10, 2, 8), torch.randn(1, 10, 2, 8)
    mask = torch.zeros(2, 10)
    mask[0, 5:] = float("-inf")
    assert torch.equal(ring_attention(q, k, v, mask), reference(q, k, v, mask))


def test_build_is_cached_and_names_a_missing_compiler(tmp_path, monkeypatch):
    first = kernels.build()
    assert kernels.build() == first  # the same source, compiler and CPU: no second compile
    assert first.stat().st_size > 0
    monkeypatch.setenv(kernels.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(kernels.KernelBuildError, match="no C\\+\\+ compiler.*VOXTRAL_RUNTIME_KERNELS"):
        kernels.build()


def test_compile_errors_are_reported(tmp_path, monkeypatch):
    monkeypatch.setenv(kernels.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("CXX", "c++ -DVOXTRAL_NO_SUCH_HEADER -include voxtral_no_such_header.h")
    with pytest.raises(kernels.KernelBuildError, match="compiling ring_attention.cpp failed"):
        kernels.build()
    assert not list(tmp_path.glob("*.so"))  # nothing half-written left to load


def test_programs_naming_an_unknown_operator_are_refused(tmp_path):
    _register_runtime_operators(tmp_path / "model.pte", "")  # nothing to register
    _register_runtime_operators(tmp_path / "model.pte", RING_ATTENTION_OUT)
    with pytest.raises(ProgramError, match="voxtral::warp_drive.out, which this runtime does not provide"):
        _register_runtime_operators(tmp_path / "model.pte", f"{RING_ATTENTION_OUT},voxtral::warp_drive.out")


def test_build_kernels_command_prints_the_library(capsys):
    from pathlib import Path

    from voxtral_runtime.cli import main

    assert main(["build-kernels"]) == 0
    assert Path(capsys.readouterr().out.strip()).is_file()
