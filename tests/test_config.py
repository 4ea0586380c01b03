"""Config parsing: every field the model needs, with errors that name the file and the field."""

from __future__ import annotations

import json
import shutil

import pytest

from voxtral_model.config import ConfigError, load_config


def test_tiny_config_values(tiny_config):
    c = tiny_config
    assert c.samples_per_token == 1280 and c.mel_frames_per_token == 8
    assert c.delay_tokens == 6 and c.right_pad_tokens == 17 and c.prompt_length == 39
    assert c.tokens.bos == 1 and c.tokens.eos == 2 and c.tokens.streaming_pad == 32 and c.tokens.streaming_word == 33
    assert c.tokens.n_special == 1000
    assert c.encoder.rope_theta == 1e6 and c.decoder.rope_theta == 1e6
    assert c.encoder.sliding_window == 750 and c.encoder.global_log_mel_max == 1.5
    assert c.prompt_ids() == [1] + [32] * 38


def _copy(tiny_dir, tmp_path):
    out = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, out)
    return out


def _edit(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("edit, field", [
    (lambda p: p.pop("dim"), "'dim'"),
    (lambda p: p.update(n_heads="many"), "'n_heads'"),
    (lambda p: p["multimodal"]["whisper_model_args"]["encoder_args"].pop("rope_theta"),
     "multimodal.whisper_model_args.encoder_args.rope_theta"),
    (lambda p: p["multimodal"]["whisper_model_args"]["encoder_args"]["audio_encoding_args"].pop("global_log_mel_max"),
     "audio_encoding_args.global_log_mel_max"),
    (lambda p: p["multimodal"]["whisper_model_args"].pop("downsample_args"), "downsample_args"),
    (lambda p: p.update(n_kv_heads=3), "n_kv_heads"),
    (lambda p: p.update(multimodal=[]), "multimodal"),
])
def test_params_errors_name_file_and_field(tiny_dir, tmp_path, edit, field):
    ckpt = _copy(tiny_dir, tmp_path)
    _edit(ckpt / "params.json", edit)
    with pytest.raises(ConfigError) as e:
        load_config(ckpt)
    assert "params.json" in str(e.value) and field in str(e.value)


@pytest.mark.parametrize("edit, field", [
    (lambda t: t.pop("audio"), "'audio'"),
    (lambda t: t["audio"].pop("streaming_n_left_pad_tokens"), "audio.streaming_n_left_pad_tokens"),
    (lambda t: t["audio"].update(transcription_delay_ms=500), "audio.transcription_delay_ms"),
    (lambda t: t["config"].pop("default_num_special_tokens"), "config.default_num_special_tokens"),
    (lambda t: t.update(special_tokens=[s for s in t["special_tokens"] if s["token_str"] != "[STREAMING_PAD]"]),
     "[STREAMING_PAD]"),
])
def test_tekken_errors_name_file_and_field(tiny_dir, tmp_path, edit, field):
    ckpt = _copy(tiny_dir, tmp_path)
    _edit(ckpt / "tekken.json", edit)
    with pytest.raises(ConfigError) as e:
        load_config(ckpt)
    assert "tekken.json" in str(e.value) and field in str(e.value)


def test_sliding_window_as_string_is_accepted(tiny_dir, tmp_path):
    ckpt = _copy(tiny_dir, tmp_path)
    _edit(ckpt / "params.json", lambda p: p.update(sliding_window="4096"))
    assert load_config(ckpt).decoder.sliding_window == 4096


def test_missing_and_invalid_files(tiny_dir, tmp_path):
    ckpt = _copy(tiny_dir, tmp_path)
    (ckpt / "params.json").write_text("{not json")
    with pytest.raises(ConfigError, match="params.json: not valid JSON"):
        load_config(ckpt)
    (ckpt / "params.json").unlink()
    with pytest.raises(ConfigError, match="params.json: file not found"):
        load_config(ckpt)
