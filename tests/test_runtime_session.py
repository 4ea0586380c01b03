"""The runtime session over exported programs: the reference's tokens, streaming = offline, any chunking,
live-stream policy (EOS, windows), flush, and load errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from hf_oracle import hf_audio_embeddings, hf_greedy_transcribe_ids, load_hf_reference
from signals import speechlike
from voxtral_model.checkpoint import load_model
from voxtral_model.mel import LogMel
from voxtral_model.model import RuntimeOptions
from voxtral_model.reference import greedy_decode, pad_audio, stream_mel_windows
from voxtral_runtime.engine import Engine
from voxtral_runtime.bundle import BundlePaths, ProgramError
from voxtral_runtime.sampling import Sampler
from voxtral_runtime.session import END_OF_AUDIO, FLUSH, MODEL_EOS, SegmentEnd, TextPiece

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def offline_engine(bundles):
    return Engine(BundlePaths.resolve(bundles("xnnpack-offline")))


def run_session(engine, audio: np.ndarray, chunks=None, steps_per_call=None, prepare=False, **options):
    """Feeds audio in the given chunk sizes (None: all at once); returns (token ids, text, events).
    `steps_per_call` caps the 80 ms steps one encoder call may take (the program's maximum by default); `prepare`
    runs the leading silence before the audio, as a live session does."""
    session = engine.session(token_ids=True, **options)
    if steps_per_call is not None:
        session.max_encoder_steps = steps_per_call
    if prepare:
        session.prepare()
    events = []
    if chunks is None:
        events += session.feed(audio)
    else:
        pos = 0
        for size in chunks:
            events += session.feed(audio[pos : pos + size])
            pos += size
        assert pos >= len(audio)
    events += session.finish()
    pieces = [e for e in events if isinstance(e, TextPiece)]
    ids = [i for p in pieces for i in p.token_ids]
    return ids, "".join(p.text for p in pieces), events


def hf_ids(tiny_dir, config, audio: torch.Tensor) -> list[int]:
    model = load_hf_reference(tiny_dir)
    mel = LogMel(config.encoder)(pad_audio(config, audio))
    with torch.no_grad():
        embeds = hf_audio_embeddings(model, mel)
    return hf_greedy_transcribe_ids(model, embeds, config.prompt_ids(), config.tokens.eos)


@pytest.mark.parametrize("seconds", [4.0, 65.0])
def test_offline_and_streaming_tokens_equal_transformers(tiny_dir, tiny_config, stream_engine, offline_engine,
                                                         seconds):
    audio = speechlike(seconds, seed=11)
    expected = hf_ids(tiny_dir, tiny_config, audio)
    assert len(set(expected)) > 3
    offline_ids, offline_text, _ = run_session(offline_engine, audio.numpy())
    stream_ids, stream_text, _ = run_session(stream_engine, audio.numpy(), chunks=[1280] * (len(audio) // 1280 + 1),
                                             prepare=True)  # as live: the prompt prefilled in two calls
    eos = tiny_config.tokens.eos
    assert [i for i in offline_ids if i != eos] == expected
    assert [i for i in stream_ids if i != eos] == expected
    assert offline_text == stream_text and offline_text


def test_output_does_not_depend_on_chunking(stream_engine):
    audio = speechlike(3.0, seed=12).numpy()
    reference = run_session(stream_engine, audio)[:2]
    rng = np.random.default_rng(0)
    random_sizes = list(rng.integers(1, 5000, size=200))
    for chunks in ([1] * len(audio), [1280] * 38, [16000] * 3, random_sizes):
        assert run_session(stream_engine, audio, chunks=chunks)[:2] == reference
    # The leading silence run before the audio (prompt rows 0..30 in one decoder call, 31..38 in another).
    for chunks in ([1280] * 38, None):
        assert run_session(stream_engine, audio, chunks=chunks, prepare=True)[:2] == reference


def test_audio_faster_than_real_time_catches_up_in_fewer_encoder_calls(stream_engine):
    """A whole file at once (or a client that ran ahead) is encoded 16 steps a call: far fewer calls than steps, and
    the tokens and text of one step per call."""
    audio = speechlike(6.0, seed=14).numpy()
    one_per_call = run_session(stream_engine, audio, steps_per_call=1)
    session = stream_engine.session(token_ids=True)
    events = session.feed(audio) + session.finish()
    pieces = [e for e in events if isinstance(e, TextPiece)]
    assert ([i for p in pieces for i in p.token_ids], "".join(p.text for p in pieces)) == one_per_call[:2]
    steps = session.step_index
    assert steps > 100 and session.encoder_calls <= -(-steps // 16) + 2  # + the two calls of finish's padding


def test_stream_longer_than_both_windows_matches_eager(bundles, tiny_config):
    """Decoder window 48 (96-slot ring) and encoder window 50 (100 slots): 12 s = 199 steps, both rings wrap."""
    engine = Engine(BundlePaths.resolve(bundles("portable-stream-small")))
    audio = speechlike(12.0, seed=13)
    ids, _, events = run_session(engine, audio.numpy(), chunks=[4000] * 48)
    model = load_model(bundles.model_dir, RuntimeOptions(max_seq_len=512, decoder_window=48, encoder_window=50))
    step = model.streaming_encoder()
    frontend = LogMel(tiny_config.encoder)
    with torch.no_grad():
        embeds = torch.cat([step(frontend.stream_window(w), torch.arange(4 * s, 4 * s + 4))
                            for s, w in stream_mel_windows(tiny_config, pad_audio(tiny_config, audio))], dim=1)
        expected = greedy_decode(tiny_config, model, embeds)
    assert [i for i in ids if i != tiny_config.tokens.eos] == expected
    assert isinstance(events[-1], SegmentEnd) and events[-1].reason == END_OF_AUDIO


class EosAt:
    """Greedy, except that the n-th sampled token is forced to EOS (the model's EOS in the middle of a stream).
    Records the token the decoder was fed at each call."""

    def __init__(self, loop, n: int, eos: int):
        self.loop, self.n, self.eos, self.calls, self.fed = loop, n, eos, 0, []

    def __call__(self, logits):
        self.calls += 1
        self.fed.append(self.loop.next_input)
        return self.eos if self.calls == self.n else int(torch.argmax(logits))


def test_eos_mid_stream_does_not_stop_a_live_session(stream_engine, tiny_config):
    audio = speechlike(4.0, seed=14).numpy()
    session = stream_engine.session(token_ids=True)
    sampler = session.loop.sampler = EosAt(session.loop, 5, tiny_config.tokens.eos)
    events = session.feed(audio[:32000]) + session.feed(audio[32000:]) + session.finish()
    assert sampler.fed[5] == tiny_config.tokens.streaming_pad  # [STREAMING_PAD] is fed back instead of EOS
    ends = [e for e in events if isinstance(e, SegmentEnd)]
    assert [e.reason for e in ends] == [MODEL_EOS, END_OF_AUDIO]
    after = events[events.index(ends[0]) + 1 :]
    assert any(isinstance(e, TextPiece) and e.text for e in after), "decoding must go on after the EOS"
    assert sampler.calls > 20


def test_flush_emits_pending_text_and_keeps_the_session(stream_engine):
    audio = speechlike(2.0, seed=15).numpy()
    session = stream_engine.session()
    events = session.feed(audio) + session.flush()
    assert isinstance(events[-1], SegmentEnd) and events[-1].reason == FLUSH
    assert events[-1].end_s == pytest.approx(2.0)
    # Everything the audio produced came out: the rest of a plain end-of-audio run adds no text.
    _, finished_text, _ = run_session(stream_engine, audio)
    assert events[-1].text == finished_text
    more = session.feed(audio) + session.finish()
    assert more[-1].reason == END_OF_AUDIO and more[-1].start_s == pytest.approx(2.0)
    pieces = [e for e in more if isinstance(e, TextPiece)]
    assert pieces and all(p.start_s >= 2.0 - 0.08 for p in pieces)


def test_timestamps_follow_the_audio(stream_engine):
    audio = speechlike(5.0, seed=16).numpy()
    _, _, events = run_session(stream_engine, audio)
    pieces = [e for e in events if isinstance(e, TextPiece)]
    assert pieces
    for a, b in zip(pieces, pieces[1:]):
        assert a.start_s <= b.start_s and a.step < b.step
    assert all(0 <= p.start_s <= p.end_s <= 5.0 for p in pieces)
    # The first piece is sampled at position 38 (the 7th real-audio step): it belongs to the first 80 ms.
    assert pieces[0].step == 6 and pieces[0].start_s == 0.0 and pieces[0].end_s == pytest.approx(0.08)


def test_temperature_sampling_is_seeded(stream_engine):
    audio = speechlike(2.0, seed=17).numpy()
    a = run_session(stream_engine, audio, temperature=1.0, seed=5)[0]
    b = run_session(stream_engine, audio, temperature=1.0, seed=5)[0]
    greedy = run_session(stream_engine, audio)[0]
    assert a == b and a != greedy


def test_max_new_tokens(stream_engine):
    ids, _, events = run_session(stream_engine, speechlike(3.0, seed=18).numpy(), max_new_tokens=5)
    assert len(ids) == 5 and events[-1].reason == "max_new_tokens"


def test_load_errors(bundles, tmp_path):
    stream, offline = bundles("xnnpack-stream"), bundles("xnnpack-offline")
    with pytest.raises(ProgramError, match="bundle directory not found"):
        BundlePaths.resolve(tmp_path / "nope")
    with pytest.raises(ProgramError, match="model.pte: file not found"):
        BundlePaths.resolve(tmp_path)
    with pytest.raises(ProgramError, match="preprocessor program, not model.pte"):
        Engine(BundlePaths.resolve(stream, model=stream / "preprocessor.pte"))
    junk = tmp_path / "junk.pte"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(ProgramError, match="not a loadable ExecuTorch program"):
        Engine(BundlePaths.resolve(stream, model=junk))
    with pytest.raises(ProgramError, match="offline program"):
        Engine(BundlePaths.resolve(offline)).session(streaming=True)
    tekken = json.loads((stream / "tekken.json").read_text())
    tekken["config"]["default_vocab_size"] += 1000
    (tmp_path / "tekken.json").write_text(json.dumps(tekken))
    with pytest.raises(ProgramError, match="vocab"):
        Engine(BundlePaths.resolve(stream, tokenizer=tmp_path / "tekken.json"))
    other = tmp_path / "other"
    shutil.copytree(stream, other)
    shutil.copyfile(offline / "preprocessor.pte", other / "preprocessor.pte")
    with pytest.raises(ProgramError, match="preprocessor.pte does not match its manifest"):
        Engine(BundlePaths.resolve(other))
    # Preprocessors of the same config are interchangeable (passed from elsewhere, a file is not hash-checked).
    Engine(BundlePaths.resolve(other, preprocessor=offline / "preprocessor.pte"))
    damaged = tmp_path / "damaged"
    shutil.copytree(stream, damaged)
    with open(damaged / "model.pte", "r+b") as f:  # one byte in the middle: the program would still load
        f.seek(damaged.joinpath("model.pte").stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ProgramError, match="model.pte does not match its manifest .*damaged or was replaced"):
        Engine(BundlePaths.resolve(damaged))
