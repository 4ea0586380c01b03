"""Exported bundles for tests, built at most once per test session (lowering takes about a minute each)."""

from __future__ import annotations

from pathlib import Path

from voxtral_export.options import ExportOptions
from voxtral_export.pipeline import export_bundle
from voxtral_export.progress import Progress

# name -> export options besides model_path/output_dir. Between them the quantized variants run every linear scheme
# on both CPU backends, plus 8w embeddings:
# A = decoder 8da4w, encoder 8da8w, embedding 8w (XNNPACK delegates the linears; portable uses the quantized kernels);
# B = decoder 8da8w, encoder 8da4w per output channel; C = decoder 4w, encoder 8w, embedding 8w (weight-only: quantized kernels).
QUANT_A = dict(qlinear="8da4w", qlinear_encoder="8da8w", qembedding="8w")
QUANT_B = dict(qlinear="8da8w", qlinear_encoder="8da4w", qlinear_encoder_group_size=0)
QUANT_C = dict(qlinear="4w", qlinear_encoder="8w", qembedding="8w")
# The README's streaming recipe: 8da4w everywhere with one scale per output channel, 8w embeddings.
QUANT_README = dict(qlinear="8da4w", qlinear_group_size=0, qlinear_encoder="8da4w", qlinear_encoder_group_size=0,
                    qembedding="8w")
# Small windows so that a few seconds of audio wrap both ring caches.
SMALL_WINDOWS = dict(sliding_window=48, max_enc_len=50)
SMALL_OFFLINE = dict(max_seq_len=512, max_audio_len=30)

VARIANTS: dict[str, dict] = {
    "xnnpack-stream": dict(backend="xnnpack", streaming=True),
    "xnnpack-offline": dict(backend="xnnpack", max_seq_len=1024, max_audio_len=75),
    "portable-offline": dict(backend="portable", **SMALL_OFFLINE),
    "portable-stream-small": dict(backend="portable", streaming=True, **SMALL_WINDOWS),
    "xnnpack-offline-qa": dict(backend="xnnpack", **SMALL_OFFLINE, **QUANT_A),
    "xnnpack-stream-qb": dict(backend="xnnpack", streaming=True, **QUANT_B),
    "xnnpack-offline-qc": dict(backend="xnnpack", **SMALL_OFFLINE, **QUANT_C),
    "portable-offline-qa": dict(backend="portable", **SMALL_OFFLINE, **QUANT_A),
    "portable-stream-qc": dict(backend="portable", streaming=True, **SMALL_WINDOWS, **QUANT_C),
    "xnnpack-stream-bf16kv": dict(backend="xnnpack", streaming=True, kv_cache_dtype="bf16", **SMALL_WINDOWS,
                                  **QUANT_README),
}


class BundleFactory:
    def __init__(self, model_dir: Path, root: Path):
        self.model_dir, self.root = model_dir, root
        self.built: dict[str, Path] = {}

    def options(self, name: str) -> ExportOptions:
        return ExportOptions(model_path=self.model_dir, output_dir=self.root / name, **VARIANTS[name])

    def __call__(self, name: str) -> Path:
        if name not in self.built:
            self.built[name] = export_bundle(self.options(name), Progress(enabled=False))
        return self.built[name]
