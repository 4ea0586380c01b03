"""Constant methods of the exported programs: every fact the runtime needs, so it never needs the model's code.

The keys and their types are voxtral_format.pte's (explained in docs/pte.md); this module only fills them in from
the model's config and the export options. Bump voxtral_format.pte.FORMAT_VERSION when they change incompatibly.
"""

from __future__ import annotations

from voxtral_model.config import VoxtralConfig
from voxtral_model.encoder import CONV1_LEFT_PAD, CONV2_LEFT_PAD
from voxtral_model.mel import LOG_MEL_RANGE, stream_window_left_context, stream_window_samples
from voxtral_model.ring_attention import RING_ATTENTION_OUT

from voxtral_format.pte import FORMAT, FORMAT_VERSION, ModelMetadata, PreprocessorMetadata

from .options import GROUPED, ExportOptions
from .programs import encoder_block_mel_frames, max_encoder_steps


def audio_metadata(config: VoxtralConfig) -> dict:
    """Framing and mel facts shared by model.pte and preprocessor.pte (voxtral_format.pte.AudioMetadata's)."""
    enc = config.encoder
    window = stream_window_samples(enc, config.mel_frames_per_token)
    left = stream_window_left_context(enc)
    return {
        "pte_format": FORMAT,
        "pte_format_version": FORMAT_VERSION,
        "sample_rate": enc.sampling_rate,
        "num_mel_bins": enc.num_mel_bins,
        "hop_length": enc.hop_length,
        "window_size": enc.window_size,
        "global_log_mel_max": enc.global_log_mel_max,
        "log_mel_floor": enc.global_log_mel_max - LOG_MEL_RANGE,
        "step_samples": config.samples_per_token,
        "chunk_mel_len": config.mel_frames_per_token,
        "stream_window_samples": window,
        "stream_left_context": left,
        "stream_lookahead": window - left - config.samples_per_token,
    }


def model_metadata(config: VoxtralConfig, options: ExportOptions, delay_tokens: int, decoder_window: int,
                   max_audio_tokens: int, state_buffers: list[str]) -> ModelMetadata:
    """`state_buffers`: the methods' mutable buffers (programs.state_buffer_names), declared where the runtime may
    restore them (the programs that plan their state apart, shares_state)."""
    enc, dec, tokens = config.encoder, config.decoder, config.tokens
    return ModelMetadata(**{
        **audio_metadata(config),
        "program": ModelMetadata.PROGRAM,
        "streaming": options.streaming,
        "runtime_operators": runtime_operators(options),
        "backend": options.backend,
        "dtype": options.dtype,
        "kv_cache_dtype": options.cache_dtype,
        "shared_state": shares_state(options),
        "state_buffers": ",".join(state_buffers) if shares_state(options) else "",
        "quantization": _quantization_label(options),
        "dim": dec.dim,
        "enc_dim": enc.dim,
        "vocab_size": dec.vocab_size,
        "downsample_factor": enc.downsample_factor,
        "max_seq_len": options.max_seq_len,
        "sliding_window": decoder_window,
        "max_enc_len": options.max_enc_len,
        "max_encoder_steps": max_encoder_steps(config) if options.streaming else 0,
        "max_audio_tokens": max_audio_tokens,
        "encoder_block_tokens": encoder_block_mel_frames() // config.mel_frames_per_token,
        "conv1_pad": CONV1_LEFT_PAD,
        "conv2_pad": CONV2_LEFT_PAD,
        "delay_tokens": delay_tokens,
        "n_left_pad_tokens": config.audio.n_left_pad_tokens,
        "n_right_pad_tokens": delay_tokens + (config.right_pad_tokens - config.delay_tokens),
        "bos_id": tokens.bos,
        "eos_id": tokens.eos,
        "streaming_pad_id": tokens.streaming_pad,
        "streaming_word_id": tokens.streaming_word,
        "n_special_tokens": tokens.n_special,
    })


def runtime_operators(options: ExportOptions) -> str:
    """Operators of ours the program calls, whose kernels the runtime must register (comma-separated): the ring
    caches of streaming programs with the custom attention layout use voxtral::ring_attention."""
    return RING_ATTENTION_OUT if options.streaming and options.layout == "custom" else ""


def shares_state(options: ExportOptions) -> bool:
    """Whether the methods' state gets an arena of its own (one load serves every method). Not for Metal, whose
    lowering cannot be checked here (it runs on macOS only): its programs keep the one-load-per-method rule."""
    return options.backend != "metal"


def preprocessor_metadata(config: VoxtralConfig, max_audio_tokens: int) -> PreprocessorMetadata:
    return PreprocessorMetadata(**audio_metadata(config), program=PreprocessorMetadata.PROGRAM,
                                max_audio_tokens=max_audio_tokens)


def _quantization_label(options: ExportOptions) -> str:
    """e.g. 'encoder=8da4w/32 decoder=8da4w/channel embedding=8w' or 'none' ('channel': one scale per output
    channel, as 8-bit schemes always are)."""
    def linear(scheme: str, group_size: int) -> str:
        return f"{scheme}/{group_size}" if scheme in GROUPED and group_size else f"{scheme}/channel"

    parts = []
    if options.qlinear_encoder:
        parts.append(f"encoder={linear(options.qlinear_encoder, options.qlinear_encoder_group_size)}")
    if options.qlinear:
        parts.append(f"decoder={linear(options.qlinear, options.qlinear_group_size)}")
    if options.qembedding:
        parts.append(f"embedding={options.qembedding}" + (f"/{options.qembedding_group_size}"
                                                          if options.qembedding_group_size else ""))
    return " ".join(parts) or "none"
