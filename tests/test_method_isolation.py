"""A session's methods keep their own state: each comes from its own load of model.pte (programs.ModelInstance).

At full size a token_embedding call in the decoder's load overwrote part of the decoder's caches; the tiny test
models never showed it, so this runs the same check script one uses on a full-size bundle
(benchmarks/method_isolation.py), on a tiny streaming bundle with bf16 caches.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "method_isolation.py"


def test_encoder_and_embedding_calls_leave_the_decoder_alone(bundles):
    done = subprocess.run([sys.executable, str(SCRIPT), str(bundles("xnnpack-stream-bf16kv")), "--steps", "12"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert done.stdout.count("largest logit difference 0 ") == 2
