"""The Metal model variant (standard attention layout, finite masks) in eager mode and through torch.export on
Linux; lowering it needs macOS and is refused here (test_export_validation)."""

from __future__ import annotations

import pytest
import torch

from voxtral_export.programs import export_model_methods
from voxtral_model.checkpoint import load_model
from voxtral_model.mel import LogMel
from voxtral_model.model import RuntimeOptions
from voxtral_model.reference import pad_audio, stream_mel_windows

from signals import speechlike


@pytest.mark.parametrize("streaming", [False, True])
def test_standard_layout_exports_and_matches_the_custom_layout(tiny_dir, tiny_config, streaming):
    opts = dict(streaming=streaming, max_seq_len=256, decoder_window=48 if streaming else None)
    metal = load_model(tiny_dir, RuntimeOptions(layout="standard", **opts))
    custom = load_model(tiny_dir, RuntimeOptions(layout="custom", **opts))
    programs = export_model_methods(metal, streaming, 256, 10)
    frontend = LogMel(tiny_config.encoder)
    padded = pad_audio(tiny_config, speechlike(1.5, seed=50))
    with torch.no_grad():
        if streaming:
            step = programs["encode_audio_chunk"].module()
            reference = custom.streaming_encoder()
            for s, w in list(stream_mel_windows(tiny_config, padded))[:20]:
                mel8, pos = frontend.stream_window(w), torch.arange(4 * s, 4 * s + 4)
                assert torch.allclose(step(mel8, pos), reference(mel8, pos), atol=1e-4)
        else:
            mel = frontend(torch.cat([padded, torch.zeros(32 * 1280 - padded.shape[0] % (32 * 1280))]))
            got = programs["audio_encoder"].module()(mel)
            assert torch.allclose(got, custom.encode_audio(mel), atol=1e-4)
        g = torch.Generator().manual_seed(0)
        embeds = torch.randn(1, 60, tiny_config.decoder.dim, generator=g) * 0.5
        decoder = programs["text_decoder"].module()
        got = torch.cat([decoder(embeds[:, :39], torch.arange(39))]
                        + [decoder(embeds[:, p : p + 1], torch.tensor([p])) for p in range(39, 60)], dim=1)
        want = torch.cat([custom.decode(embeds[:, :39], torch.arange(39), last_only=True)]
                         + [custom.decode(embeds[:, p : p + 1], torch.tensor([p])) for p in range(39, 60)], dim=1)
    assert torch.allclose(got, want, atol=1e-4)
    assert torch.isfinite(got).all()
