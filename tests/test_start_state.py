"""The start state every streaming session shares (start_state.py): a session that copies it in gives the tokens, text
and timings of one that computes its leading silence, on a fresh instance and on one an earlier session left dirty;
the state buffers are named completely (every one of every method); the copy holds what the silence wrote, no more,
and is never written by the sessions that use it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from signals import speechlike
from voxtral_runtime.engine import Engine
from voxtral_runtime.bundle import BundlePaths, ProgramError
from voxtral_runtime.programs import ModelInstance
from voxtral_runtime.start_state import StartState, written_runs


def run(engine: Engine, audio, instance: ModelInstance, restore: bool, prepare: bool = True):
    session = engine.session(instance, token_ids=True)
    if not restore:
        session.start = None
    if prepare:
        session.prepare()
    events = []
    for start in range(0, len(audio), 4000):  # live-sized chunks
        events += session.feed(audio[start : start + 4000])
    events += session.finish()
    return events, session


# the plain streaming program, bf16 caches, and rings that wrap within seconds (a dirty instance's whole ring is
# garbage from the last session)
@pytest.mark.slow
@pytest.mark.parametrize("name", ["xnnpack-stream", "xnnpack-stream-bf16kv", "portable-stream-small"])
def test_a_restored_start_gives_what_a_computed_one_gives(bundles, name):
    engine = Engine(BundlePaths.resolve(bundles(name)))
    assert engine.start_state is not None
    audio = speechlike(6.0, seed=31).numpy()
    other = speechlike(9.0, seed=32).numpy()
    instance = engine.instance()
    computed, _ = run(engine, audio, ModelInstance(engine.spec), restore=False)
    assert len([e for e in computed if getattr(e, "text", "")]) > 3
    run(engine, other, instance, restore=True)  # leaves its own state in the instance
    restored, session = run(engine, audio, instance, restore=True)
    assert restored == computed
    run(engine, other, instance, restore=False)
    unprepared, _ = run(engine, audio, instance, restore=True, prepare=False)  # restored at the first audio
    assert unprepared == computed


@pytest.mark.slow
def test_prepare_copies_the_start_instead_of_running_the_model(stream_engine):
    start = stream_engine.start_state
    saved = [piece.values.clone() for piece in start.pieces]
    meta = stream_engine.spec.meta
    session = stream_engine.session()
    session.prepare()
    assert session.encoder_calls == 0 and session.step_index == start.steps == meta.n_left_pad_tokens - 1
    assert session.loop.position == start.steps and not session.loop.pending
    session.feed(speechlike(3.0, seed=33).numpy())
    session.finish()
    assert all(torch.equal(a, piece.values) for a, piece in zip(saved, start.pieces))  # sessions copy from it, never into it
    # only what the silence wrote: the first slots of each ring and the conv state
    assert 0 < start.nbytes < sum(t.numel() * t.element_size() for t in session.instance.state) / 2


@pytest.mark.slow
def test_state_buffers_name_every_state_buffer(stream_engine, tiny_config):
    meta = stream_engine.spec.meta
    names = meta.state_buffers.split(",")
    decoder_layers, encoder_layers = tiny_config.decoder.n_layers, tiny_config.encoder.n_layers
    assert sorted(names) == sorted(
        [f"model.decoder.caches.{i}.{kv}_cache" for i in range(decoder_layers) for kv in "kv"]
        + [f"step.caches.{i}.{kv}_cache" for i in range(encoder_layers) for kv in "kv"]
        + ["step.conv1_state", "step.conv2_state"])
    left_out = dataclasses.replace(stream_engine.spec, meta=dataclasses.replace(meta, state_buffers=",".join(names[1:])))
    with pytest.raises(ProgramError, match="state_buffers name .* re-export"):
        ModelInstance(left_out)
    unknown = dataclasses.replace(stream_engine.spec, meta=dataclasses.replace(
        meta, state_buffers=meta.state_buffers + ",model.decoder.nothing"))
    with pytest.raises(ProgramError, match="'model.decoder.nothing'.* is in no method"):
        ModelInstance(unknown)


class Buffers:
    """A stand-in instance: two state buffers."""

    def __init__(self):
        self.state = [torch.zeros(10), torch.zeros(2, 3, dtype=torch.bfloat16)]


@pytest.mark.parametrize("written, runs", [([1, 1, 0, 1, 0, 0, 1], [(0, 2), (3, 4), (6, 7)]), ([0, 0], []),
                                           ([1, 1, 1], [(0, 3)])])
def test_written_runs(written, runs):
    assert written_runs(torch.tensor(written, dtype=torch.bool)) == runs


def test_the_start_state_keeps_what_the_silence_wrote_and_nothing_else():
    instance = Buffers()

    def silence() -> int:
        instance.state[0][2:5] = 7.0
        instance.state[1][1] = 3.0
        instance.state[1][0, 0] += 1.0  # depends on what was there: not a state of its own, not kept
        return 4

    start = StartState.capture(instance, silence)
    assert start.steps == 4 and start.nbytes == 3 * 4 + 3 * 2
    for buffer in instance.state:
        buffer.fill_(9.0)
    start.restore(instance)
    assert instance.state[0].tolist() == [9, 9, 7, 7, 7, 9, 9, 9, 9, 9]
    assert instance.state[1].tolist() == [[9, 9, 9], [3, 3, 3]]
