"""Sharing XNNPACK's packed weights between program instances: the ctypes mirror of ExecuTorch's BackendOption matches
the installed header, the runtime turns the backend option on (and off when asked), and instances that share weights
compute what separate ones do, also after one of them is freed."""

from __future__ import annotations

import ctypes
import gc
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from signals import speechlike
from voxtral_runtime import xnnpack_weights
from voxtral_runtime.engine import Engine
from voxtral_runtime.bundle import BundlePaths
from voxtral_runtime.session import TextPiece

# Enough weight (~11 M parameters, 45 MB fp32) that XNNPACK's packed copy stands far above allocator noise; the tiny
# test model's weights are too small to see in a process's memory.
WEIGHTY_DIMS = dict(dim=384, hidden_dim=1536, n_layers=4, vocab_size=8192)
INSTANCES = 3

# One process per mode (the backend option is process-wide): private memory added by each instance after the first,
# each loaded and stepped once (XNNPACK packs at load and sizes its workspace on first use).
MEMORY_SCRIPT = """
import sys
import numpy as np
from voxtral_runtime.engine import Engine
from voxtral_runtime.bundle import BundlePaths

def private_bytes():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

engine = Engine(BundlePaths.resolve(sys.argv[1]), share_weights=sys.argv[2] == "shared")
kept, added = [], []
for i in range(int(sys.argv[3])):
    before = private_bytes()
    instance = engine.instance()
    session = engine.session(instance)
    session.feed(np.zeros(engine.spec.meta.step_samples * 4, dtype=np.float32))
    kept.append((instance, session))
    added.append(private_bytes() - before)
print("ADDED", *added[1:])
"""

LAYOUT_PROGRAM = r"""
#include <executorch/runtime/backend/options.h>
#include <cstddef>
#include <cstdio>
#include <cstring>
using executorch::runtime::BackendOption;
// The byte at `index_offset` must hold the variant's alternative for each kind of value.
static int index_byte(const BackendOption& o, size_t index_offset) {
  return reinterpret_cast<const unsigned char*>(&o)[index_offset];
}
int main(int argc, char** argv) {
  size_t index_offset = std::strtoul(argv[1], nullptr, 10);
  BackendOption b{}, i{}, s{};
  b.value = true;
  i.value = 7;
  s.value = std::array<char, executorch::runtime::kMaxOptionValueLength>{};
  std::printf("%zu %zu %zu %zu %d %d %d %d\n", sizeof(BackendOption), alignof(BackendOption),
              offsetof(BackendOption, value), executorch::runtime::kMaxOptionKeyLength,
              index_byte(b, index_offset), index_byte(i, index_offset), index_byte(s, index_offset),
              std::get<int>(i.value));
}
"""


def test_backend_option_layout_matches_the_installed_header(tmp_path):
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler to check the header with (.ci/run installs g++)")
    import executorch

    include = next(Path(p) / "include" for p in executorch.__path__ if (Path(p) / "include").is_dir())
    source, binary = tmp_path / "layout.cpp", tmp_path / "layout"
    source.write_text(LAYOUT_PROGRAM)
    subprocess.run([compiler, "-std=c++17", f"-I{include}", str(source), "-o", str(binary)], check=True)
    index_offset = xnnpack_weights.BackendOption.index.offset
    size, align, value_offset, key_length, *indices, int_value = map(
        int, subprocess.check_output([str(binary), str(index_offset)], text=True).split())
    option = xnnpack_weights.BackendOption
    assert (size, align) == (ctypes.sizeof(option), ctypes.alignment(option))
    assert (value_offset, key_length) == (option.value.offset, xnnpack_weights.KEY_LENGTH)
    assert indices == [xnnpack_weights.BOOL_INDEX, xnnpack_weights.INT_INDEX, xnnpack_weights.STRING_INDEX]
    assert int_value == 7


@pytest.fixture(scope="module")
def stream_bundle(bundles):
    return BundlePaths.resolve(bundles("xnnpack-stream"))


@pytest.mark.slow
def test_engine_sets_the_backend_option(stream_bundle):
    assert Engine(stream_bundle, share_weights=False).spec.shares_weights is False
    assert xnnpack_weights.weight_sharing_enabled() is False
    assert Engine(stream_bundle).spec.shares_weights is True
    assert xnnpack_weights.weight_sharing_enabled() is True  # the default, for every later test too


def transcribe_ids(engine: Engine, instance, audio: np.ndarray) -> list[int]:
    session = engine.session(instance, token_ids=True)
    events = session.feed(audio) + session.finish()
    return [i for e in events if isinstance(e, TextPiece) for i in e.token_ids]


@pytest.mark.slow
def test_instances_sharing_weights_equal_separate_ones_and_outlive_each_other(stream_bundle):
    audio = speechlike(3.0, seed=41).numpy()
    separate = Engine(stream_bundle, share_weights=False)
    reference = transcribe_ids(separate, separate.instance(), audio)
    assert reference, "the tiny model should say something for this signal"

    shared = Engine(stream_bundle)  # loads its first instance with sharing on
    first, second = shared.instance(), shared.instance()
    assert transcribe_ids(shared, first, audio) == reference
    assert transcribe_ids(shared, second, audio) == reference
    del first  # its programs are destroyed: the cache must keep the weights the second instance still uses
    gc.collect()
    assert transcribe_ids(shared, second, audio) == reference
    assert transcribe_ids(shared, shared.instance(), audio) == reference  # a later load finds them in the cache


@pytest.fixture(scope="module")
def weighty_bundle(tmp_path_factory) -> Path:
    from voxtral_export.options import ExportOptions
    from voxtral_export.pipeline import export_bundle
    from voxtral_export.progress import Progress
    from voxtral_model.synth import write_synthetic_checkpoint

    root = tmp_path_factory.mktemp("weighty")
    checkpoint = write_synthetic_checkpoint(root / "checkpoint", "tiny", overrides=WEIGHTY_DIMS)
    options = ExportOptions(model_path=checkpoint, output_dir=root / "bundle", backend="xnnpack", streaming=True,
                            sliding_window=64, max_enc_len=64)
    return export_bundle(options, Progress(enabled=False))


def added_per_instance(bundle: Path, mode: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(bundle), mode, str(INSTANCES)], check=True,
                         capture_output=True, text=True).stdout
    return [int(x) for x in next(line for line in out.splitlines() if line.startswith("ADDED")).split()[1:]]


@pytest.mark.slow
def test_extra_instances_do_not_repack_the_weights(weighty_bundle):
    """Each extra session's private memory drops by about the packed weights' size when they are shared (what remains
    is the instance's own planned memory: caches and activations)."""
    weights = (weighty_bundle / "model.pte").stat().st_size
    shared, unshared = added_per_instance(weighty_bundle, "shared"), added_per_instance(weighty_bundle, "unshared")
    saved = [u - s for u, s in zip(unshared, shared)]
    print(f"model.pte {weights / 2**20:.1f} MiB; private memory per extra instance: shared "
          f"{[round(x / 2**20, 1) for x in shared]} MiB, unshared {[round(x / 2**20, 1) for x in unshared]} MiB")
    assert all(x > 0.5 * weights for x in saved), "sharing did not save the packed weights' memory"
