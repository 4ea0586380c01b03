"""voxtral::ring_attention: the runtime's C++ kernel against the operator's reference math, through ExecuTorch.

Each case exports a one-operator program and runs it with the kernel voxtral_runtime.kernels compiled, against
`ring_attention.reference` in float64. The cases cover both row splits (few rows: one tile; many rows: KV-head
tiles; both over the same merged slot ranges), GQA groups of 1-4 query heads, head sizes that leave a lone 8-lane
chunk, slot counts off the 32-slot block, an unfilled ring (blocks skipped) and a window that hides the middle of
the ring, with float32 and bfloat16 caches. The kernel's vectors are 16 floats wide with AVX-512 (else 8): head
sizes of 16k + 8 take its 8-float tail.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

from ptes import load_program
from voxtral_model.attention import attention_mask
from voxtral_model.ring_attention import RING_ATTENTION_OUT, reference, ring_attention
from voxtral_runtime import kernels
from voxtral_runtime.bundle import ProgramError
from voxtral_runtime.programs import _register_runtime_operators


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
    "GQA 4, D 72 (wide vectors and a tail)": (1, 4, 1, 72, 90, 70, 200),
    "unfilled ring (prefill at 0)": (39, 8, 2, 32, 112, 96, 0),
    "many rows (KV-head tiles)": (64, 8, 2, 32, 120, 100, 1000),
    "many rows, no GQA, window inside the ring": (64, 5, 5, 16, 200, 40, 150),
}


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_the_reference(tmp_path, case, cache_dtype):
    seq, heads, kv_heads, head_dim, slots, window, start = CASES[case]
    g = torch.Generator().manual_seed(hash(case) % 1000)
    q = torch.randn(1, seq, heads, head_dim, generator=g)
    k = torch.randn(1, slots, kv_heads, head_dim, generator=g).to(cache_dtype)
    v = torch.randn(1, slots, kv_heads, head_dim, generator=g).to(cache_dtype)
    mask = attention_mask(torch.arange(start, start + seq), slots, window, True, torch.float32, float("-inf"))
    assert torch.isinf(mask).any() and (mask == 0).all(dim=1).logical_not().all()  # every row hides something
    out = run_program(tmp_path, q, k, v, mask)
    expect = reference(q.double(), k.double(), v.double(), mask.double())
    assert out.shape == q.shape
    assert (out.double() - expect).abs().max() < 2e-5


# (query heads H, KV heads Hkv, head_dim D, slots N, window, first position, positions alone, positions shared): the
# full-size encoder's shapes (32 heads of 64, an 814-slot ring, a 750-frame window) and the decoder's (GQA 4, a
# 2048-slot ring), and two that leave rows outside whole groups of four (a KV head's last group of 1 or 3 rows, which
# the kernel scores one row and slot at a time, and a last block of 6 slots).
CALLS = {
    "full encoder": (32, 32, 64, 814, 750, 1000, 4, 64),
    "full decoder": (32, 8, 128, 2048, 2048, 5000, 4, 12),
    "5 positions, no GQA": (4, 4, 16, 70, 60, 100, 5, 69),
    "GQA 3": (6, 2, 32, 45, 40, 90, 1, 50),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_a_row_gets_the_same_bits_however_many_rows_share_its_call(tmp_path, call):
    """The slot ranges the kernel merges do not depend on the row count, and a score has the same bits however it is
    computed: the first positions of a call with many rows (KV-head tiles: a 16-step encoder call, a 12-row prefill)
    are bit for bit those of a call of their own (one tile), so k encoder steps per call give the tokens of one step
    per call at any size."""
    heads, kv_heads, head_dim, slots, window, start, few, many = CALLS[call]
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, many, heads, head_dim, generator=g)
    k = torch.randn(1, slots, kv_heads, head_dim, generator=g).bfloat16()
    v = torch.randn(1, slots, kv_heads, head_dim, generator=g).bfloat16()
    mask = attention_mask(torch.arange(start, start + many), slots, window, True, torch.float32, float("-inf"))
    assert few * heads <= 256 < many * heads  # one call in each of the kernel's row splits
    alone = run_program(tmp_path, q[:, :few].contiguous(), k, v, mask[:few].contiguous())
    shared = run_program(tmp_path, q, k, v, mask)
    assert torch.equal(shared[:, :few], alone)


def test_eager_operator_is_the_reference():
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 10, 2, 8), torch.randn(1, 10, 2, 8)
    mask = torch.zeros(2, 10)
    mask[0, 5:] = float("-inf")
    assert torch.equal(ring_attention(q, k, v, mask), reference(q, k, v, mask))
    # bfloat16 caches: the float32 math on the values they hold
    k16, v16 = k.bfloat16(), v.bfloat16()
    out = ring_attention(q, k16, v16, mask)
    assert out.dtype == torch.float32
    assert torch.equal(out, reference(q, k16.float(), v16.float(), mask))


def test_kernel_refuses_caches_of_two_types(tmp_path):
    q, k, v = torch.randn(1, 1, 2, 8), torch.randn(1, 10, 1, 8), torch.randn(1, 10, 1, 8).bfloat16()
    with pytest.raises(RuntimeError, match="0x12"):  # InvalidArgument
        run_program(tmp_path, q, k, v, torch.zeros(1, 10))


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


def _has_avx512() -> bool:
    try:
        return " avx512f " in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.mark.skipif(platform.machine() != "x86_64" or not _has_avx512(), reason="the default build is the 8-float one")
def test_the_8_float_build_matches_the_reference_too(tmp_path):
    """Without AVX-512 the kernel runs 8-float vectors: the same cases pass with a build told to leave it out."""
    env = {**os.environ, "CXX": "c++ -mno-avx512f", kernels.CACHE_ENV: str(tmp_path)}
    env.pop(kernels.PREBUILT_ENV, None)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                           "-k", "kernel_matches_the_reference"], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).parent)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "16 passed" in done.stdout and list(tmp_path.glob("*.so"))
