"""Model configuration, read from a Mistral checkpoint directory.

`params.json` holds the network shapes (docs/spec.md §2.1); the `audio` block of `tekken.json` holds the streaming
facts (delay, left padding: docs/spec.md §2.3); the special-token table of `tekken.json` gives the control ids
(both read by voxtral_format.tekken, the parser the runtime uses too). Every field is checked: a missing or
malformed one raises `ConfigError` naming the file and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxtral_format import tekken
from voxtral_format.pte import TOKENIZER_FILE
from voxtral_format.tekken import AudioArgs, SpecialTokens, TekkenError

PARAMS_FILE = "params.json"
WEIGHTS_FILE = "consolidated.safetensors"

# mistral-common's OFFLINE_STREAMING_BUFFER_TOKENS: right padding = delay + 1 + this (docs/spec.md §7).
RIGHT_PAD_BUFFER_TOKENS = 10


class ConfigError(ValueError):
    """A checkpoint file is missing a field or has a malformed one."""


@dataclass(frozen=True)
class EncoderArgs:
    dim: int
    n_layers: int
    head_dim: int
    hidden_dim: int
    n_heads: int
    rope_theta: float
    norm_eps: float
    sliding_window: int
    num_mel_bins: int
    hop_length: int
    window_size: int
    sampling_rate: int
    frame_rate: float
    global_log_mel_max: float
    downsample_factor: int


@dataclass(frozen=True)
class DecoderArgs:
    dim: int
    n_layers: int
    head_dim: int
    hidden_dim: int
    n_heads: int
    n_kv_heads: int
    rope_theta: float
    norm_eps: float
    vocab_size: int
    sliding_window: int
    ada_t_cond_dim: int


@dataclass(frozen=True)
class VoxtralConfig:
    encoder: EncoderArgs
    decoder: DecoderArgs
    audio: AudioArgs
    tokens: SpecialTokens

    @property
    def samples_per_token(self) -> int:
        """Raw samples per 80 ms token (1280)."""
        return round(self.audio.sampling_rate / self.audio.frame_rate)

    @property
    def mel_frames_per_token(self) -> int:
        """Mel frames per token (8)."""
        return self.samples_per_token // self.encoder.hop_length

    @property
    def delay_tokens(self) -> int:
        """Transcription delay in tokens (480 ms -> 6)."""
        return round(self.audio.transcription_delay_ms * self.audio.frame_rate / 1000)

    @property
    def right_pad_tokens(self) -> int:
        """Silence appended after the audio (beyond alignment) so delayed words and EOS come out (17)."""
        return self.delay_tokens + 1 + RIGHT_PAD_BUFFER_TOKENS

    @property
    def prompt_length(self) -> int:
        """BOS + one STREAMING_PAD per left-pad and delay token (39)."""
        return 1 + self.audio.n_left_pad_tokens + self.delay_tokens

    def prompt_ids(self) -> list[int]:
        """The reference prompt: BOS then STREAMING_PAD for the left padding and the delay (docs/spec.md §7)."""
        return [self.tokens.bos] + [self.tokens.streaming_pad] * (self.prompt_length - 1)


class _Fields:
    """Typed access to a JSON object, with errors that name the file and the dotted field path."""

    def __init__(self, data: Any, file: str, path: str = ""):
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: field '{path or '<root>'}' must be an object, got {type(data).__name__}")
        self.data, self.file, self.path = data, file, path

    def _name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _get(self, key: str, default: Any) -> Any:
        if key in self.data and self.data[key] is not None:
            return self.data[key]
        if default is not _REQUIRED:
            return default
        raise ConfigError(f"{self.file}: missing field '{self._name(key)}'")

    def obj(self, key: str) -> "_Fields":
        return _Fields(self._get(key, _REQUIRED), self.file, self._name(key))

    def int(self, key: str, default: Any = None, positive: bool = True) -> int:
        value = self._get(key, _REQUIRED if default is None else default)
        if isinstance(value, str):  # params.json sometimes stores sliding_window as a string
            try:
                value = int(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int) and not (
            isinstance(value, float) and value.is_integer()
        ):
            raise ConfigError(f"{self.file}: field '{self._name(key)}' must be an integer, got {value!r}")
        value = int(value)
        if positive and value <= 0:
            raise ConfigError(f"{self.file}: field '{self._name(key)}' must be positive, got {value}")
        return value

    def float(self, key: str, default: Any = None, positive: bool = True) -> float:
        value = self._get(key, _REQUIRED if default is None else default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{self.file}: field '{self._name(key)}' must be a number, got {value!r}")
        if positive and value <= 0:
            raise ConfigError(f"{self.file}: field '{self._name(key)}' must be positive, got {value}")
        return float(value)

    def list(self, key: str) -> list:
        value = self._get(key, _REQUIRED)
        if not isinstance(value, list):
            raise ConfigError(f"{self.file}: field '{self._name(key)}' must be a list, got {type(value).__name__}")
        return value


_REQUIRED = object()


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path}: file not found (a Mistral checkpoint directory holds {PARAMS_FILE}, "
                          f"{WEIGHTS_FILE} and {TOKENIZER_FILE})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e


def _transformer_fields(block: _Fields) -> dict:
    """The fields the encoder and decoder blocks of params.json both have, under the same names."""
    ints = {name: block.int(name) for name in ("dim", "n_layers", "head_dim", "hidden_dim", "n_heads")}
    return {**ints, "rope_theta": block.float("rope_theta"), "norm_eps": block.float("norm_eps")}


def parse_params(params: dict, file: str = PARAMS_FILE) -> tuple[EncoderArgs, DecoderArgs]:
    top = _Fields(params, file)
    whisper = top.obj("multimodal").obj("whisper_model_args")
    enc = whisper.obj("encoder_args")
    audio = enc.obj("audio_encoding_args")
    decoder = DecoderArgs(
        **_transformer_fields(top),
        n_kv_heads=top.int("n_kv_heads"),
        vocab_size=top.int("vocab_size"),
        sliding_window=top.int("sliding_window", default=8192),
        ada_t_cond_dim=top.int("ada_rms_norm_t_cond_dim"),
    )
    if decoder.n_heads % decoder.n_kv_heads:
        raise ConfigError(f"{file}: field 'n_heads' ({decoder.n_heads}) must be a multiple of 'n_kv_heads' "
                          f"({decoder.n_kv_heads})")
    encoder = EncoderArgs(
        **_transformer_fields(enc),
        sliding_window=enc.int("sliding_window"),
        num_mel_bins=audio.int("num_mel_bins"),
        hop_length=audio.int("hop_length"),
        window_size=audio.int("window_size"),
        sampling_rate=audio.int("sampling_rate"),
        frame_rate=audio.float("frame_rate"),
        global_log_mel_max=audio.float("global_log_mel_max", positive=False),
        downsample_factor=whisper.obj("downsample_args").int("downsample_factor"),
    )
    return encoder, decoder


def parse_tokenizer(data: dict, file: str = TOKENIZER_FILE) -> tuple[AudioArgs, SpecialTokens]:
    """The `audio` block and the control ids of tekken.json."""
    try:
        return tekken.audio_args(data, file), tekken.special_tokens(data, file)
    except TekkenError as e:
        raise ConfigError(str(e)) from e


def load_config(model_dir: str | Path) -> VoxtralConfig:
    """Reads params.json and tekken.json from a Mistral checkpoint directory."""
    model_dir = Path(model_dir)
    params_path, tekken_path = model_dir / PARAMS_FILE, model_dir / TOKENIZER_FILE
    encoder, decoder = parse_params(_read_json(params_path), str(params_path))
    audio, tokens = parse_tokenizer(_read_json(tekken_path), str(tekken_path))
    config = VoxtralConfig(encoder=encoder, decoder=decoder, audio=audio, tokens=tokens)
    _check_consistency(config, str(params_path), str(tekken_path))
    return config


def _check_consistency(config: VoxtralConfig, params_file: str, tekken_file: str) -> None:
    enc, audio = config.encoder, config.audio
    if enc.sampling_rate != audio.sampling_rate:
        raise ConfigError(f"{tekken_file}: field 'audio.sampling_rate' ({audio.sampling_rate}) disagrees with "
                          f"{params_file} 'audio_encoding_args.sampling_rate' ({enc.sampling_rate})")
    if config.samples_per_token % enc.hop_length:
        raise ConfigError(f"{tekken_file}: field 'audio.frame_rate' ({audio.frame_rate}) must give a whole number "
                          f"of {enc.hop_length}-sample mel frames per token")
    frames_per_token = config.mel_frames_per_token
    if frames_per_token != 2 * enc.downsample_factor:
        raise ConfigError(f"{params_file}: field 'downsample_factor' ({enc.downsample_factor}) must be half the mel "
                          f"frames per token ({frames_per_token}): the conv stem halves the frame rate")
    delay_tokens = audio.transcription_delay_ms * audio.frame_rate / 1000
    if not delay_tokens.is_integer():
        raise ConfigError(f"{tekken_file}: field 'audio.transcription_delay_ms' ({audio.transcription_delay_ms}) "
                          f"must be a multiple of one token ({1000 / audio.frame_rate:g} ms)")
