"""The synthetic checkpoint writer: real file layouts, real special ids, a byte-level vocabulary, the CLI."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

from safetensors import safe_open

from voxtral_model.checkpoint import checkpoint_key_map, expected_shapes
from voxtral_model.synth import FULL_PARAMS, params_json, tekken_json


def test_tekken_layout(tiny_dir, tiny_config):
    tekken = json.loads((tiny_dir / "tekken.json").read_text())
    specials = {s["rank"]: s["token_str"] for s in tekken["special_tokens"]}
    assert len(specials) == 1000 and specials[1] == "<s>" and specials[2] == "</s>"
    assert specials[32] == "[STREAMING_PAD]" and specials[33] == "[STREAMING_WORD]"
    assert tekken["config"]["default_num_special_tokens"] == 1000
    vocab = [base64.b64decode(v["token_bytes"]) for v in tekken["vocab"]]
    assert len(vocab) > tiny_config.decoder.vocab_size - 1000  # listed beyond what the model uses, like the real file
    assert vocab[:256] == [bytes([b]) for b in range(256)]
    assert any(len(piece.decode("utf-8", "ignore")) < len(piece) for piece in vocab[256:])  # multi-byte pieces
    assert tekken["audio"]["transcription_delay_ms"] == 480 and tekken["audio"]["streaming_n_left_pad_tokens"] == 32


def test_weights_file_has_real_names_shapes_and_bf16(tiny_dir, tiny_config):
    shapes = expected_shapes(tiny_config)
    with safe_open(str(tiny_dir / "consolidated.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(checkpoint_key_map(tiny_config))
        for key in f.keys():
            tensor = f.get_tensor(key)
            assert tuple(tensor.shape) == shapes[key] and str(tensor.dtype) == "torch.bfloat16"


def test_full_dims_are_the_real_model():
    from voxtral_model.config import VoxtralConfig, parse_params, parse_tokenizer

    encoder, decoder = parse_params(params_json(FULL_PARAMS))
    audio, tokens = parse_tokenizer(tekken_json(131072))
    config = VoxtralConfig(encoder=encoder, decoder=decoder, audio=audio, tokens=tokens)
    shapes = expected_shapes(config)
    assert len(shapes) == 711
    assert sum(__import__("math").prod(s) for s in shapes.values()) > 4.3e9
    assert shapes["layers.0.attention.wq.weight"] == (4096, 3072)
    assert shapes["mm_streams_embeddings.embedding_module.tok_embeddings.weight"] == (131072, 3072)


def test_cli(tmp_path):
    out = tmp_path / "ckpt"
    result = subprocess.run([sys.executable, "-m", "voxtral_model.cli", "synth", "--out", str(out), "--seed", "3"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "random weights" in result.stderr
    check = subprocess.run([sys.executable, "-m", "voxtral_model.cli", "check", str(out)], capture_output=True,
                           text=True)
    assert check.returncode == 0 and "ok" in check.stdout
    (out / "params.json").write_text("{}")
    bad = subprocess.run([sys.executable, "-m", "voxtral_model.cli", "check", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and "params.json: missing field" in bad.stderr
