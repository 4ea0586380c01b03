"""Export options and their validation, done before any heavy work so a bad flag fails in a second."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path

from voxtral_model.config import VoxtralConfig

BACKENDS = ("xnnpack", "portable", "metal")
LINEAR_QUANT = ("4w", "8w", "8da4w", "8da8w", "fpa4w")
EMBEDDING_QUANT = ("8w",)
DTYPES = ("fp32", "bf16")
GROUPED = ("4w", "8da4w", "fpa4w")  # schemes that take a group size; the 8-bit ones are per output channel
WEIGHT_ONLY = ("4w", "8w")


def uses_kernel_linears(backend: str, scheme: str | None) -> bool:
    """Whether a linear scheme runs in ExecuTorch's quantized kernels instead of a delegate (kernel_linear.py):
    everything on portable, and the weight-only schemes that XNNPACK would miscompute."""
    if scheme is None or backend == "metal":
        return False
    return backend == "portable" or scheme in WEIGHT_ONLY

DEFAULT_OUTPUT_DIR = "./voxtral_rt_exports"
DEFAULT_MAX_SEQ_LEN = 4096
DEFAULT_MAX_ENC_LEN = 750
DEFAULT_MAX_AUDIO_LEN_S = 300.0
DEFAULT_GROUP_SIZE = 32
PER_CHANNEL = 0  # a 4-bit scheme's group size meaning "one scale per output channel" (channelwise)
# XNNPACK's blockwise 4-bit kernels (qb4w) take blocks of a multiple of this many input features; other sizes fail
# deep inside lowering, so they are refused up front.
XNNPACK_BLOCK_MULTIPLE = 32
CANDIDATE_GROUP_SIZES = (256, 128, 64, 32)


class ExportError(ValueError):
    """Bad options or inputs, reported before anything is written."""


@dataclass(frozen=True)
class ExportOptions:
    model_path: Path
    backend: str = "xnnpack"
    output_dir: Path = Path(DEFAULT_OUTPUT_DIR)
    streaming: bool = False
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN
    delay_tokens: int | None = None
    max_enc_len: int = DEFAULT_MAX_ENC_LEN
    sliding_window: int | None = None
    max_audio_len: float = DEFAULT_MAX_AUDIO_LEN_S
    dtype: str = "fp32"
    qlinear: str | None = None
    qlinear_group_size: int = DEFAULT_GROUP_SIZE
    qlinear_encoder: str | None = None
    qlinear_encoder_group_size: int = DEFAULT_GROUP_SIZE
    qembedding: str | None = None
    qembedding_group_size: int = 0
    kv_cache_dtype: str | None = None  # streaming ring caches; None: dtype

    @property
    def layout(self) -> str:
        """Attention layout: ExecuTorch's fused custom ops on CPU backends, standard SDPA on Metal."""
        return "standard" if self.backend == "metal" else "custom"

    @property
    def cache_dtype(self) -> str:
        """What the KV caches store: --kv-cache-dtype for a streaming program's ring caches, else --dtype."""
        return (self.kv_cache_dtype or self.dtype) if self.streaming else self.dtype

    @property
    def quantized(self) -> bool:
        return bool(self.qlinear or self.qlinear_encoder or self.qembedding)

    def to_json(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def validate_flags(options: ExportOptions, system: str | None = None) -> None:
    """Checks that need no checkpoint: backend, platform, scheme/backend pairs, numeric ranges."""
    system = system or platform.system()
    if options.backend not in BACKENDS:
        raise ExportError(f"--backend {options.backend!r} is not supported; choose one of {', '.join(BACKENDS)}")
    if options.backend == "metal" and system != "Darwin":
        raise ExportError("--backend metal lowers only on macOS (it compiles Metal shaders with Apple's toolchain); "
                          f"this machine runs {system}. Use --backend xnnpack here, or export on a Mac.")
    for flag, value in (("--qlinear", options.qlinear), ("--qlinear-encoder", options.qlinear_encoder)):
        if value is not None and value not in LINEAR_QUANT:
            raise ExportError(f"{flag} {value!r} is not supported; choose one of {', '.join(LINEAR_QUANT)}")
        if value == "fpa4w" and options.backend != "metal":
            raise ExportError(f"{flag} fpa4w runs only on the Metal backend; on {options.backend} use 4w or 8da4w")
    if options.qembedding is not None and options.qembedding not in EMBEDDING_QUANT:
        raise ExportError(f"--qembedding {options.qembedding!r} is not supported; choose one of "
                          f"{', '.join(EMBEDDING_QUANT)}")
    if options.dtype not in DTYPES:
        raise ExportError(f"--dtype {options.dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
    if options.kv_cache_dtype is not None:
        if options.kv_cache_dtype not in DTYPES:
            raise ExportError(f"--kv-cache-dtype {options.kv_cache_dtype!r} is not supported; choose one of "
                              f"{', '.join(DTYPES)}")
        if not options.streaming or options.backend == "metal":
            raise ExportError("--kv-cache-dtype sets the ring caches of streaming CPU programs (XNNPACK, portable), "
                              "which the runtime's ring-attention kernel reads: add --streaming, or leave it out "
                              "(offline and Metal caches follow --dtype)")
        if options.dtype != "fp32":
            raise ExportError("--kv-cache-dtype needs --dtype fp32 (the ring-attention kernel attends in float32)")
    for flag, value in (("--max-seq-len", options.max_seq_len), ("--max-enc-len", options.max_enc_len)):
        if value <= 0:
            raise ExportError(f"{flag} must be positive, got {value}")
    for flag, scheme, value in (("--qlinear-group-size", options.qlinear, options.qlinear_group_size),
                                ("--qlinear-encoder-group-size", options.qlinear_encoder,
                                 options.qlinear_encoder_group_size)):
        if value < 0:
            raise ExportError(f"{flag} must be {PER_CHANNEL} (per output channel) or positive, got {value}")
        if value == PER_CHANNEL and scheme == "fpa4w":
            raise ExportError(f"{flag} {PER_CHANNEL}: fpa4w needs groups; use 32, 64 or 128")
        if (options.backend == "xnnpack" and scheme in GROUPED and not uses_kernel_linears(options.backend, scheme)
                and value % XNNPACK_BLOCK_MULTIPLE):
            raise ExportError(f"{flag} {value}: XNNPACK's blockwise {scheme} kernels need a multiple of "
                              f"{XNNPACK_BLOCK_MULTIPLE}; use {', '.join(map(str, CANDIDATE_GROUP_SIZES[::-1]))}, "
                              f"or {PER_CHANNEL} for one scale per output channel")
    if options.qembedding_group_size < 0:
        raise ExportError(f"--qembedding-group-size must be 0 (per row) or positive, got {options.qembedding_group_size}")
    if options.max_audio_len <= 0:
        raise ExportError(f"--max-audio-len must be positive, got {options.max_audio_len}")
    if options.sliding_window is not None and not options.streaming:
        raise ExportError("--sliding-window shrinks the streaming decoder's ring cache; it needs --streaming")
    if options.delay_tokens is not None and options.delay_tokens < 1:
        raise ExportError(f"--delay-tokens must be at least 1, got {options.delay_tokens}")


def incompatible_linears(config: VoxtralConfig, group_size: int, component: str) -> list[tuple[str, int]]:
    """(layer kind, in_features) of the component's linears whose input width is not a multiple of the group size."""
    enc, dec = config.encoder, config.decoder
    if component == "encoder":
        widths = {"attention.wq/wk/wv": enc.dim, "attention.wo": enc.n_heads * enc.head_dim,
                  "feed_forward.w1/w3": enc.dim, "feed_forward.w2": enc.hidden_dim,
                  "adapter.0": enc.dim * enc.downsample_factor, "adapter.2": dec.dim}
    else:
        # The ada-norm projections are folded into a constant at export (quantize.py), so they are not listed.
        widths = {"attention.wq/wk/wv": dec.dim, "attention.wo": dec.n_heads * dec.head_dim,
                  "feed_forward.w1/w3": dec.dim, "feed_forward.w2": dec.hidden_dim, "output": dec.dim}
    return [(name, width) for name, width in widths.items() if width % group_size]


def validate_against_config(options: ExportOptions, config: VoxtralConfig) -> None:
    """Group sizes must divide the input width of every linear they quantize."""
    for flag, scheme, group_size, component in (
            ("--qlinear-group-size", options.qlinear, options.qlinear_group_size, "decoder"),
            ("--qlinear-encoder-group-size", options.qlinear_encoder, options.qlinear_encoder_group_size, "encoder")):
        if scheme not in GROUPED:
            continue
        bad = incompatible_linears(config, group_size, component) if group_size != PER_CHANNEL else []
        if bad:
            listing = ", ".join(f"{name} ({width})" for name, width in bad)
            # Every candidate is a multiple of XNNPACK's block multiple, so any that divides the widths fits.
            fitting = [g for g in CANDIDATE_GROUP_SIZES[::-1] if not incompatible_linears(config, g, component)]
            hint = (f"use one that divides them: {', '.join(map(str, fitting))}, or" if fitting else "use")
            raise ExportError(f"{flag} {group_size} does not divide the input features of {component} layers "
                              f"{listing}; {hint} {PER_CHANNEL} for one scale per output channel")
    delay = options.delay_tokens or config.delay_tokens
    prompt = 1 + config.audio.n_left_pad_tokens + delay
    window = min(options.sliding_window or config.decoder.sliding_window, config.decoder.sliding_window)
    if options.streaming and window < prompt:
        raise ExportError(f"--sliding-window {window} is shorter than the {prompt}-token prompt")
    if not options.streaming and options.max_seq_len <= prompt:
        raise ExportError(f"--max-seq-len {options.max_seq_len} leaves no room after the {prompt}-token prompt")
