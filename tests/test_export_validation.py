"""voxtral-export refuses bad options and inputs before any heavy work, and leaves nothing half-written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from voxtral_export.cli import main
from voxtral_export.options import ExportError, ExportOptions, validate_against_config, validate_flags
from voxtral_export.quantize import quantize_model
from voxtral_model.checkpoint import load_model, load_model_lazily
from voxtral_model.model import RuntimeOptions
from voxtral_model.config import DecoderArgs


def run_cli(*args: str):
    """The CLI as a user runs it (separate process: real argv parsing, exit code, stderr)."""
    return subprocess.run([sys.executable, "-m", "voxtral_export.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args, message", [
    (["--qlinear", "fpa4w"], "fpa4w runs only on the Metal backend"),
    (["--qlinear-encoder", "fpa4w"], "fpa4w runs only on the Metal backend"),
    (["--backend", "metal"], "--backend metal lowers only on macOS"),
    (["--qlinear", "8da4w", "--qlinear-group-size", "64"], "--qlinear-group-size 64 does not divide"),
    (["--qlinear-encoder", "8da4w", "--qlinear-encoder-group-size", "48"],
     "XNNPACK's blockwise 8da4w kernels need a multiple of 32; use 32, 64, 128, 256, or 0"),
    (["--qlinear-encoder", "4w", "--qlinear-encoder-group-size", "48"],
     "does not divide the input features of encoder"),
    (["--qlinear", "8da4w", "--qlinear-group-size", "16"], "need a multiple of 32"),
    (["--qlinear", "8da4w", "--qlinear-group-size", "-1"], "must be 0 (per output channel) or positive"),
    (["--sliding-window", "64"], "--sliding-window shrinks the streaming decoder's ring cache; it needs --streaming"),
    (["--max-seq-len", "20"], "leaves no room after the 39-token prompt"),
    (["--kv-cache-dtype", "bf16"], "--kv-cache-dtype sets the ring caches of streaming CPU programs"),
    (["--streaming", "--kv-cache-dtype", "bf16", "--dtype", "bf16"], "--kv-cache-dtype needs --dtype fp32"),
])
def test_bad_options_fail_fast_and_write_nothing(tiny_dir, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["--model-path", str(tiny_dir), "--output-dir", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "params.json").unlink(), "params.json: file not found"),
    (lambda d: (d / "tekken.json").write_text("[]"), "tekken.json: field '<root>' must be an object"),
    (lambda d: (d / "consolidated.safetensors").write_bytes(b"junk"), "not a readable safetensors file"),
])
def test_missing_or_malformed_checkpoint(tiny_dir, tmp_path, damage, message):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, ckpt)
    damage(ckpt)
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.pte").write_text("previous export")
    assert main(["--model-path", str(ckpt), "--output-dir", str(out), "--quiet"]) == 2
    assert (out / "model.pte").read_text() == "previous export"  # an earlier export is left alone
    assert not list(tmp_path.glob(".out.partial*"))


def test_a_misfit_group_size_suggests_sizes_that_fit(tiny_config, tiny_dir):
    """The tiny decoder's 96-wide inputs take groups of 32 only: the message names it, never the size that failed."""
    options = ExportOptions(model_path=tiny_dir, qlinear="8da4w", qlinear_group_size=64)
    with pytest.raises(ExportError, match="use one that divides them: 32, or 0 for one scale per output channel"):
        validate_against_config(options, tiny_config)
    validate_against_config(replace(options, qlinear_group_size=0), tiny_config)  # per channel fits any width


def test_metal_is_refused_off_macos_but_allowed_on_macos(tiny_dir):
    options = ExportOptions(model_path=tiny_dir, backend="metal", qlinear="fpa4w")
    with pytest.raises(ExportError, match="only on macOS"):
        validate_flags(options, system="Linux")
    validate_flags(options, system="Darwin")


def test_group_size_64_works_because_the_ada_projections_are_folded(tiny_config, tiny_dir):
    """The 32-wide ada-norm bottleneck would not fit groups of 64; folded into a constant, it needs no quantizing."""
    dec = tiny_config.decoder
    wide = replace(tiny_config, decoder=DecoderArgs(**{**dec.__dict__, "dim": 128, "hidden_dim": 256}))
    options = ExportOptions(model_path=tiny_dir, qlinear="8da4w", qlinear_group_size=64)
    validate_against_config(options, wide)
    with pytest.raises(ExportError, match="decoder layers attention.wq/wk/wv \\(96\\)"):
        validate_against_config(options, tiny_config)
    model, folded = load_model(tiny_dir), load_model(tiny_dir)
    folded.decoder.fold_time_conditioning()
    assert all(layer.ada_rms_norm_t_cond is None for layer in folded.decoder.layers)
    embeds = torch.randn(1, 5, dec.dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(folded.decode(embeds, torch.arange(5)), model.decode(embeds, torch.arange(5)), atol=1e-5)
    options = ExportOptions(model_path=tiny_dir, qlinear="8da4w", qlinear_group_size=32, qlinear_encoder="8da8w")
    assert quantize_model(model, options, torch.float32) == []


def test_quantizing_a_lazily_loaded_model_reads_each_layer_and_gives_the_same_model(tiny_dir):
    """The export's path (layers read one at a time while quantizing) against quantizing a whole loaded model."""
    options = ExportOptions(model_path=tiny_dir, qlinear="8da4w", qlinear_encoder="8da8w", qembedding="8w")
    whole = load_model(tiny_dir, RuntimeOptions(dtype=torch.bfloat16))
    quantize_model(whole, options, torch.float32)
    lazy, weights = load_model_lazily(tiny_dir, RuntimeOptions(dtype=torch.bfloat16))
    quantize_model(lazy, options, torch.float32, weights=weights)
    assert weights.unread() == []
    embeds = torch.randn(1, 5, lazy.config.decoder.dim, generator=torch.Generator().manual_seed(0))
    mel = torch.randn(1, lazy.config.encoder.num_mel_bins, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(lazy.decode(embeds, torch.arange(5)), whole.decode(embeds, torch.arange(5)))
        assert torch.equal(lazy.encode_audio(mel), whole.encode_audio(mel))


def test_cli_process_exit_code_and_help(tiny_dir, tmp_path):
    result = run_cli("--model-path", str(tiny_dir), "--output-dir", str(tmp_path / "o"), "--qlinear", "fpa4w")
    assert result.returncode == 2 and "voxtral-export: error:" in result.stderr
    result = run_cli("--help")
    assert result.returncode == 0
    for text in ("--qlinear-group-size", "folded", "ada-norm", "fpa4w", "--streaming", "--max-enc-len"):
        assert text in result.stdout
