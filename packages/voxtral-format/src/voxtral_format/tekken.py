"""tekken.json, Mistral's tokenizer file, read once for everyone: the model's config, the export and the runtime.

Three parts of it matter here (docs/spec.md §2.3, §6): the special-token table (the control ids: BOS, EOS,
[STREAMING_PAD], [STREAMING_WORD]), the vocabulary (model id n_special + i is the raw bytes of `vocab[i]`, base64)
and the `audio` block (how the streaming format frames and pads audio). Every field is checked; a missing or
malformed one raises `TekkenError` naming the file and the dotted field.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from pathlib import Path

# The control tokens the model and the runtime use: SpecialTokens field -> name in the special-token table.
CONTROL_TOKENS = {"bos": "<s>", "eos": "</s>", "streaming_pad": "[STREAMING_PAD]", "streaming_word": "[STREAMING_WORD]"}


class TekkenError(ValueError):
    """tekken.json is missing or malformed, or does not match the model."""


@dataclass(frozen=True)
class SpecialTokens:
    """The control ids the model and the runtime use; ids below `n_special` never produce text."""

    bos: int
    eos: int
    streaming_pad: int
    streaming_word: int
    n_special: int
    by_name: dict[str, int] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class AudioArgs:
    """The `audio` block: how audio is framed and padded for the streaming format."""

    sampling_rate: int
    frame_rate: float
    transcription_delay_ms: float
    n_left_pad_tokens: int


def read(path: str | Path) -> object:
    """The parsed JSON of a tekken.json file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TekkenError(f"{path}: tokenizer file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TekkenError(f"{path}: not valid JSON ({e})") from None


def special_tokens(data: object, file: str) -> SpecialTokens:
    n_special = _field(data, "config.default_num_special_tokens", int, file)
    if n_special <= 0:
        raise TekkenError(f"{file}: field 'config.default_num_special_tokens' must be positive, got {n_special}")
    by_name: dict[str, int] = {}
    for i, entry in enumerate(_field(data, "special_tokens", list, file)):
        rank = _field(entry, "rank", int, file, f"special_tokens[{i}]")
        name = _field(entry, "token_str", str, file, f"special_tokens[{i}]")
        if not 0 <= rank < n_special:
            raise TekkenError(f"{file}: field 'special_tokens[{i}].rank' ({rank}) is outside [0, {n_special})")
        by_name[name] = rank
    for name in CONTROL_TOKENS.values():
        if name not in by_name:
            raise TekkenError(f"{file}: missing special token '{name}' in field 'special_tokens'")
    ids = {key: by_name[name] for key, name in CONTROL_TOKENS.items()}
    return SpecialTokens(**ids, n_special=n_special, by_name=by_name)


def vocabulary(data: object, file: str) -> tuple[int, list[bytes]]:
    """(vocab_size, the bytes of every non-control id in order): vocab_size = n_special + len(pieces)."""
    vocab_size = _field(data, "config.default_vocab_size", int, file)
    n_special = _field(data, "config.default_num_special_tokens", int, file)
    if n_special <= 0 or vocab_size <= n_special:
        raise TekkenError(f"{file}: field 'config.default_vocab_size' ({vocab_size}) must exceed "
                          f"'config.default_num_special_tokens' ({n_special}), which must be positive")
    vocab = _field(data, "vocab", list, file)
    n_used = vocab_size - n_special
    if len(vocab) < n_used:
        raise TekkenError(f"{file}: field 'vocab' has {len(vocab)} entries but config.default_vocab_size - "
                          f"config.default_num_special_tokens = {n_used} are needed")
    pieces = []
    for i, entry in enumerate(vocab[:n_used]):  # the list is longer than the vocabulary the model uses
        encoded = _field(entry, "token_bytes", str, file, f"vocab[{i}]")
        try:
            pieces.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            raise TekkenError(f"{file}: field 'vocab[{i}].token_bytes' is not valid base64") from None
    return vocab_size, pieces


def audio_args(data: object, file: str) -> AudioArgs:
    def positive(key: str, kind: type):
        value = _field(data, f"audio.{key}", kind, file)
        if value <= 0:
            raise TekkenError(f"{file}: field 'audio.{key}' must be positive, got {value}")
        return value

    return AudioArgs(sampling_rate=positive("sampling_rate", int), frame_rate=float(positive("frame_rate", float)),
                     transcription_delay_ms=float(positive("transcription_delay_ms", float)),
                     n_left_pad_tokens=positive("streaming_n_left_pad_tokens", int))


def _field(data: object, dotted: str, kind: type, file: str, where: str = ""):
    """data[a][b]... for dotted 'a.b', checked to be of `kind` (an int stands for a float; a bool for neither)."""
    value, path = data, where
    for key in dotted.split("."):
        if not isinstance(value, dict):
            raise TekkenError(f"{file}: field '{path or '<root>'}' must be an object")
        path = f"{path}.{key}" if path else key
        if key not in value:
            raise TekkenError(f"{file}: missing field '{path}'")
        value = value[key]
    accepted = (int, float) if kind is float else kind
    if not isinstance(value, accepted) or (kind in (int, float) and isinstance(value, bool)):
        raise TekkenError(f"{file}: field '{path}' has the wrong type ({type(value).__name__})")
    return value
