"""Our model against transformers' independent `voxtral_realtime` implementation, from the same checkpoint files.

The checkpoint is converted to the transformers layout by `hf_oracle` (including the rotate-half RoPE permutation),
so agreement here means our interleaved-RoPE model on the raw Mistral weights computes what Mistral's reference does.
"""

from __future__ import annotations

import pytest
import torch

from hf_oracle import hf_audio_embeddings, hf_decoder_logits, hf_greedy_transcribe_ids, hf_log_mel, load_hf_reference
from signals import speechlike
from voxtral_model.checkpoint import load_model
from voxtral_model.mel import LogMel
from voxtral_model.reference import greedy_decode, pad_audio


@pytest.fixture(scope="module")
def hf_model(tiny_dir):
    return load_hf_reference(tiny_dir)


@pytest.fixture(scope="module")
def our_model(tiny_dir):
    return load_model(tiny_dir)


@pytest.fixture(scope="module")
def long_audio(tiny_config):
    """20 s: 1,196 encoder frames (with the reference's padding), well past the 750-frame encoder window."""
    return pad_audio(tiny_config, speechlike(20.0, seed=3))


def test_log_mel_matches(tiny_dir, tiny_config, long_audio):
    ours = LogMel(tiny_config.encoder)(long_audio)[0]
    theirs = torch.from_numpy(hf_log_mel(tiny_dir, long_audio.numpy()))
    diff = (ours - theirs).abs().max().item()
    print(f"log-mel max abs diff vs transformers: {diff:.2e}")
    assert ours.shape == theirs.shape and diff < 1e-4


def test_offline_audio_embeddings_match_beyond_the_window(tiny_config, our_model, hf_model, long_audio):
    mel = LogMel(tiny_config.encoder)(long_audio)
    assert mel.shape[-1] // 2 > tiny_config.encoder.sliding_window
    with torch.no_grad():
        ours = our_model.encode_audio(mel)[0]
        theirs = hf_audio_embeddings(hf_model, mel)
    diff = (ours - theirs).abs().max().item()
    print(f"audio embeddings max abs diff vs transformers: {diff:.2e} (scale {theirs.abs().max():.2f})")
    assert diff < 1e-4 * theirs.abs().max().item()


def test_decoder_logits_match_with_teacher_forcing(tiny_config, our_model, hf_model, long_audio):
    mel = LogMel(tiny_config.encoder)(long_audio)
    g = torch.Generator().manual_seed(5)
    text = torch.randint(1000, tiny_config.decoder.vocab_size, (24,), generator=g).tolist()
    ids = tiny_config.prompt_ids() + text
    with torch.no_grad():
        audio = our_model.encode_audio(mel)[0]
        embeds = audio[None, : len(ids)] + our_model.embed_tokens(torch.tensor([ids]))
        ours = our_model.decode(embeds, torch.arange(len(ids)))[0]
        theirs = hf_decoder_logits(hf_model, audio, ids)
    diff = (ours - theirs).abs().max().item()
    print(f"decoder logits max abs diff vs transformers: {diff:.2e} (scale {theirs.abs().max():.2f})")
    assert diff < 1e-4 * theirs.abs().max().item()


def test_greedy_ids_match_and_vary(tiny_config, our_model, hf_model):
    padded = pad_audio(tiny_config, speechlike(4.0, seed=7))
    with torch.no_grad():
        audio = our_model.encode_audio(LogMel(tiny_config.encoder)(padded))
        ours = greedy_decode(tiny_config, our_model, audio)
        theirs = hf_greedy_transcribe_ids(hf_model, audio[0], tiny_config.prompt_ids(), tiny_config.tokens.eos)
    assert ours == theirs
    assert len(set(ours)) >= 3, f"synthetic weights should give varied tokens, got {ours}"
