"""A session's methods keep their own state, whether they share one load of a program that plans its state apart
(shared_state) or come from loads of their own (older programs): programs.ModelInstance.

At full size a token_embedding call in the decoder's load of an older program overwrote part of the decoder's
caches; the tiny test models never showed it, so this runs the same check script one uses on a full-size bundle
(benchmarks/method_isolation.py), on a tiny streaming bundle with bf16 caches; and checks that a session on one load
gives the tokens of a session on a load per method.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from signals import speechlike
from voxtral_runtime.engine import Engine
from voxtral_runtime.bundle import BundlePaths
from voxtral_runtime.programs import ModelInstance
from voxtral_runtime.session import TextPiece

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "method_isolation.py"


def test_encoder_and_embedding_calls_leave_the_decoder_alone(bundles):
    done = subprocess.run([sys.executable, str(SCRIPT), str(bundles("xnnpack-stream-bf16kv")), "--steps", "12"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert done.stdout.count("largest logit difference 0 ") == 2


def test_one_load_gives_the_tokens_of_a_load_per_method(bundles):
    engine = Engine(BundlePaths.resolve(bundles("xnnpack-stream")))
    assert engine.spec.meta.shared_state
    per_method = dataclasses.replace(engine.spec, meta=dataclasses.replace(engine.spec.meta, shared_state=False))
    audio = speechlike(4.0, seed=90).numpy()

    def tokens(instance):
        session = engine.session(instance, token_ids=True)
        events = session.feed(audio) + session.finish()
        return [t for e in events if isinstance(e, TextPiece) for t in e.token_ids]

    assert tokens(ModelInstance(engine.spec)) == tokens(ModelInstance(per_method))
