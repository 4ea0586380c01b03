"""The 80 ms streaming encoder step reproduces the whole-signal offline encoder (docs/spec.md §8.5)."""

from __future__ import annotations

import pytest
import torch

from voxtral_model.attention import ring_slots
from voxtral_model.checkpoint import load_model
from voxtral_model.mel import LogMel
from voxtral_model.model import RuntimeOptions
from voxtral_model.reference import pad_audio, stream_mel_windows

from signals import speechlike


@pytest.mark.parametrize("layout", ["standard", "custom"])
def test_streaming_equals_offline_beyond_the_window(tiny_dir, tiny_config, layout):
    """28 s of audio: 1,596 encoder frames, so the 750-frame window applies and the 814-slot ring (750 + 64) wraps."""
    model = load_model(tiny_dir, RuntimeOptions(layout=layout))
    frontend = LogMel(tiny_config.encoder)
    padded = pad_audio(tiny_config, speechlike(28.0))
    with torch.no_grad():
        offline = model.encode_audio(frontend(padded))
        step = model.streaming_encoder()
        streamed = []
        for s, window in stream_mel_windows(tiny_config, padded):
            mel8 = frontend.stream_window(window)
            streamed.append(step(mel8, torch.arange(4 * s, 4 * s + 4)))
    streamed = torch.cat(streamed, dim=1)
    assert streamed.shape == offline.shape and offline.shape[1] * 4 > ring_slots(750)  # the ring wraps
    assert (streamed - offline).abs().max().item() < 1e-4 * offline.abs().max().item()


def test_a_new_stream_needs_no_reset(tiny_dir, tiny_config):
    """Restarting at position 0 zeroes the conv state and masks stale ring slots by arithmetic alone."""
    model = load_model(tiny_dir)
    frontend = LogMel(tiny_config.encoder)
    step = model.streaming_encoder()
    first = pad_audio(tiny_config, speechlike(1.0, seed=1))
    second = pad_audio(tiny_config, speechlike(1.0, seed=2))

    def run(padded):
        with torch.no_grad():
            return torch.cat([step(frontend.stream_window(w), torch.arange(4 * s, 4 * s + 4))
                              for s, w in stream_mel_windows(tiny_config, padded)], dim=1)

    fresh = run(second)
    run(first)
    again = run(second)
    assert torch.equal(fresh, again)


def test_mel_window_lands_on_the_offline_grid(tiny_config):
    frontend = LogMel(tiny_config.encoder)
    padded = pad_audio(tiny_config, speechlike(2.0))
    offline = frontend(padded)
    for s, window in stream_mel_windows(tiny_config, padded):
        assert torch.allclose(frontend.stream_window(window), offline[:, :, 8 * s : 8 * s + 8], atol=1e-4), s
