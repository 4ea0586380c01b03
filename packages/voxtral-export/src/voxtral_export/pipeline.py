"""Checkpoint directory -> bundle directory (model.pte, preprocessor.pte, tekken.json, manifest.json).

Everything is written into a sibling temporary directory first and moved into place only when complete, so a failed
or interrupted export leaves nothing half-written in the output directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch

from voxtral_model.checkpoint import CheckpointError, check_checkpoint, load_model_lazily
from voxtral_format.pte import MANIFEST_FILE, MODEL_FILE, PREPROCESSOR_FILE, TOKENIZER_FILE
from voxtral_model.config import WEIGHTS_FILE, ConfigError, load_config
from voxtral_model.model import RuntimeOptions

from .heap import release_freed_memory, return_large_blocks_when_freed, trimming
from .lower import lower_to_executorch
from .metadata import model_metadata, preprocessor_metadata
from .options import ExportError, ExportOptions, validate_against_config, validate_flags
from .programs import export_model_methods, export_preprocessor_methods, max_audio_tokens, state_buffer_names
from .progress import Progress, peak_rss_gib
from .quantize import quantize_model


def file_sha256(path: Path) -> str:
    """The runtime checks each file against this at load (a 2.5 GB model.pte hashes in about 1.5 s)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def validate(options: ExportOptions):
    """All checks that need no heavy work: flags, platform, config and checkpoint headers. Returns the config."""
    validate_flags(options)
    try:
        config = load_config(options.model_path)
        check_checkpoint(Path(options.model_path) / WEIGHTS_FILE, config)
    except (ConfigError, CheckpointError) as e:
        raise ExportError(str(e)) from e
    validate_against_config(options, config)
    return config


def _register_runtime_ops() -> None:
    """Quantized-op and llama custom-op kernels/meta functions must exist while tracing and lowering."""
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401


# --kv-cache-dtype -> the ring caches' element type (None: they follow the model's dtype)
RING_CACHE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def export_bundle(options: ExportOptions, progress: Progress | None = None) -> Path:
    progress = progress or Progress()
    config = validate(options)
    _register_runtime_ops()
    return_large_blocks_when_freed()
    dtype = torch.bfloat16 if options.dtype == "bf16" else torch.float32
    delay = options.delay_tokens or config.delay_tokens
    output_dir = Path(options.output_dir)
    staging = output_dir.parent / f".{output_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with progress.phase("load checkpoint"):
            # bf16 is the checkpoint's own precision: quantizing from it loses nothing and halves peak memory.
            load_dtype = torch.bfloat16 if options.quantized else dtype
            model, weights = load_model_lazily(options.model_path, RuntimeOptions(
                layout=options.layout, streaming=options.streaming, max_seq_len=options.max_seq_len,
                delay_tokens=delay, decoder_window=options.sliding_window, encoder_window=options.max_enc_len,
                dtype=load_dtype, ring_cache_dtype=RING_CACHE_DTYPES.get(options.kv_cache_dtype)), config=config)
        with progress.phase("quantize" if options.quantized else "cast"):
            skipped = quantize_model(model, options, dtype, progress=lambda m: progress.say(f"  {m}"), weights=weights)
            if skipped:
                progress.say(f"  left unquantized (input width not a multiple of the group size): {len(skipped)} "
                             f"linears, e.g. {skipped[0]}")
        n_audio_tokens = max_audio_tokens(config, options.max_audio_len)
        with progress.phase("export model methods"), trimming():
            programs = export_model_methods(model, options.streaming, options.max_seq_len, options.max_audio_len)
        metadata = model_metadata(config, options, delay, model.decoder.window, n_audio_tokens,
                                  state_buffer_names(programs))
        with progress.phase(f"lower model.pte to {options.backend}"), trimming():
            (staging / MODEL_FILE).write_bytes(lower_to_executorch(programs, options.backend, metadata.constants(),
                                                                   progress=lambda m: progress.say(f"  {m}"),
                                                                   shared_state=metadata.shared_state))
        del programs, model
        release_freed_memory()
        with progress.phase("export and lower preprocessor.pte"):
            pre = export_preprocessor_methods(config, options.max_audio_len)
            # The mel frontend stays fp32 and is tiny: XNNPACK where available, portable otherwise.
            pre_backend = "portable" if options.backend == "portable" else "xnnpack"
            (staging / PREPROCESSOR_FILE).write_bytes(
                lower_to_executorch(pre, pre_backend,
                                    preprocessor_metadata(config, n_audio_tokens).constants()))
        shutil.copyfile(Path(options.model_path) / TOKENIZER_FILE, staging / TOKENIZER_FILE)
        manifest = {
            "format": "voxtral-realtime-bundle",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "source": str(Path(options.model_path).resolve()),
            "options": options.to_json(),
            "unquantized_linears": skipped,
            "files": {name: (staging / name).stat().st_size for name in (MODEL_FILE, PREPROCESSOR_FILE,
                                                                          TOKENIZER_FILE)},
            "sha256": {name: file_sha256(staging / name) for name in (MODEL_FILE, PREPROCESSOR_FILE, TOKENIZER_FILE)},
            "metadata": metadata.constants(),
            "phase_seconds": {k: round(v, 2) for k, v in progress.durations.items()},
            "peak_memory_gib": round(peak_rss_gib(), 2),
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        output_dir.mkdir(parents=True, exist_ok=True)
        for name in (MODEL_FILE, PREPROCESSOR_FILE, TOKENIZER_FILE, MANIFEST_FILE):
            os.replace(staging / name, output_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    progress.say(f"wrote {output_dir} (model.pte {manifest['files'][MODEL_FILE] / 2**20:.1f} MiB); "
                 f"peak memory {peak_rss_gib():.1f} GiB")
    return output_dir

