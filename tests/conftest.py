"""Session-wide fixtures: synthetic checkpoints are written once per test session.

voxtral_runtime is imported first, before anything loads torch, so the suite runs the runtime's production thread
settings (OMP_NUM_THREADS=1: ExecuTorch's own pool parallelises the programs); test_runtime_cli checks it took hold.
"""

from __future__ import annotations

import voxtral_runtime  # noqa: F401  (before torch: its thread settings apply only if set before torch loads)

import pytest

from voxtral_model.synth import write_synthetic_checkpoint


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random checkpoint in Mistral's exact format (params.json, tekken.json, consolidated.safetensors)."""
    return write_synthetic_checkpoint(tmp_path_factory.mktemp("tiny"), "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_config(tiny_dir):
    from voxtral_model.config import load_config

    return load_config(tiny_dir)


@pytest.fixture(scope="session")
def bundles(tiny_dir, tmp_path_factory):
    """bundles(name) -> exported bundle directory for a variant of tests/bundles.py, built on first use."""
    from bundles import BundleFactory

    return BundleFactory(tiny_dir, tmp_path_factory.mktemp("bundles"))


@pytest.fixture(scope="module")
def stream_bundle(bundles):
    """The plain XNNPACK streaming bundle most runtime and server tests use."""
    return bundles("xnnpack-stream")


@pytest.fixture(scope="module")
def stream_engine(stream_bundle):
    """An engine over `stream_bundle`, one per test module (its idle instances are that module's)."""
    from voxtral_runtime.engine import Engine
    from voxtral_runtime.bundle import BundlePaths

    return Engine(BundlePaths.resolve(stream_bundle))
