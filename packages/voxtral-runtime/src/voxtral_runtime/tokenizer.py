"""Tekken tokenizer, decode side only: model ids -> text, for whole sequences and token by token.

Speech-to-text only needs decoding, so this reads tekken.json directly instead of pulling in tiktoken or
mistral-common. The rule (docs/spec.md §6): ids below `n_special` are control tokens (BOS, EOS, [STREAMING_PAD],
[STREAMING_WORD], ...) and never produce text; every other id maps to the raw bytes of `vocab[id - n_special]`.
Tokens are byte-level, so one UTF-8 character may span several tokens; the streaming detokenizer keeps an
incremental UTF-8 decoder so that only whole characters are emitted.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
from pathlib import Path

TOKENIZER_FILE = "tekken.json"
BOS_NAME = "<s>"
EOS_NAME = "</s>"
STREAMING_PAD_NAME = "[STREAMING_PAD]"
STREAMING_WORD_NAME = "[STREAMING_WORD]"


class TokenizerError(ValueError):
    """tekken.json is missing or malformed, or does not match the model."""


def _field(obj: object, key: str, where: str, kind: type | tuple[type, ...], file: str):
    """obj[key], checked to be of `kind`; TokenizerError naming the file and field otherwise."""
    name = f"{where}.{key}" if where else key
    if not isinstance(obj, dict):
        raise TokenizerError(f"{file}: field '{where or '<root>'}' must be an object")
    if key not in obj:
        raise TokenizerError(f"{file}: missing field '{name}'")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TokenizerError(f"{file}: field '{name}' has the wrong type ({type(value).__name__})")
    return value


class Tekken:
    """Id -> bytes table of a tekken.json, plus the special ids the runtime needs."""

    def __init__(self, pieces: list[bytes], n_special: int, special_ids: dict[str, int]):
        self.n_special = n_special
        self.vocab_size = n_special + len(pieces)
        # One bytes object per model id (b"" for control ids): the hot path is a list index.
        self.id_bytes: list[bytes] = [b""] * n_special + pieces
        self.special_ids = special_ids
        self.bos_id = special_ids[BOS_NAME]
        self.eos_id = special_ids[EOS_NAME]
        self.streaming_pad_id = special_ids[STREAMING_PAD_NAME]
        self.streaming_word_id = special_ids[STREAMING_WORD_NAME]

    @classmethod
    def load(cls, path: str | Path) -> Tekken:
        """Reads tekken.json (a file, or a model directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        file = str(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TokenizerError(f"{file}: tokenizer file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TokenizerError(f"{file}: not valid JSON ({e})") from None
        return cls.from_dict(data, file)

    @classmethod
    def from_dict(cls, data: object, file: str = TOKENIZER_FILE) -> Tekken:
        """Builds the tokenizer from parsed tekken.json content; `file` is only used in error messages."""
        config = _field(data, "config", "", dict, file)
        vocab_size = _field(config, "default_vocab_size", "config", int, file)
        n_special = _field(config, "default_num_special_tokens", "config", int, file)
        if n_special <= 0 or vocab_size <= n_special:
            raise TokenizerError(f"{file}: field 'config.default_vocab_size' ({vocab_size}) must exceed "
                                 f"'config.default_num_special_tokens' ({n_special}), which must be positive")

        vocab = _field(data, "vocab", "", list, file)
        n_used = vocab_size - n_special
        if len(vocab) < n_used:
            raise TokenizerError(f"{file}: field 'vocab' has {len(vocab)} entries but config.default_vocab_size - "
                                 f"config.default_num_special_tokens = {n_used} are needed")
        pieces = []
        for i, entry in enumerate(vocab[:n_used]):  # the list is longer than the vocabulary the model uses
            encoded = _field(entry, "token_bytes", f"vocab[{i}]", str, file)
            try:
                pieces.append(base64.b64decode(encoded, validate=True))
            except (binascii.Error, ValueError):
                raise TokenizerError(f"{file}: field 'vocab[{i}].token_bytes' is not valid base64") from None

        specials = _field(data, "special_tokens", "", list, file)
        by_name: dict[str, int] = {}
        for i, entry in enumerate(specials):
            rank = _field(entry, "rank", f"special_tokens[{i}]", int, file)
            name = _field(entry, "token_str", f"special_tokens[{i}]", str, file)
            if not 0 <= rank < n_special:
                raise TokenizerError(f"{file}: field 'special_tokens[{i}].rank' ({rank}) is outside "
                                     f"[0, {n_special})")
            by_name[name] = rank
        for name in (BOS_NAME, EOS_NAME, STREAMING_PAD_NAME, STREAMING_WORD_NAME):
            if name not in by_name:
                raise TokenizerError(f"{file}: missing special token '{name}' in field 'special_tokens'")
        return cls(pieces, n_special, by_name)

    def is_special(self, token_id: int) -> bool:
        """True for control ids (BOS, EOS, [STREAMING_PAD], [STREAMING_WORD], ...), which carry no text."""
        return 0 <= token_id < self.n_special

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes of one id (b"" for control ids)."""
        if not 0 <= token_id < self.vocab_size:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary [0, {self.vocab_size})")
        return self.id_bytes[token_id]

    def decode(self, ids) -> str:
        """Text of a whole id sequence: control ids dropped, bytes joined, UTF-8 decoded with replacement."""
        return b"".join(self.token_bytes(int(i)) for i in ids).decode("utf-8", errors="replace")

    def check_vocab_size(self, model_vocab_size: int) -> None:
        """Raises TokenizerError unless the model's vocabulary size equals this tokenizer's."""
        if model_vocab_size != self.vocab_size:
            raise TokenizerError(
                f"vocabulary size mismatch: the model has {model_vocab_size} tokens but tekken.json has "
                f"config.default_vocab_size = {self.vocab_size}; the tokenizer must be the tekken.json of the "
                f"checkpoint the model was exported from")


class StreamingDetokenizer:
    """Turns ids into text one at a time, emitting only complete UTF-8 characters."""

    def __init__(self, tekken: Tekken):
        self.tekken = tekken
        self._id_bytes = tekken.id_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Text that became complete with this id ("" for control ids or a partial character)."""
        if not 0 <= token_id < len(self._id_bytes):
            raise TokenizerError(f"token id {token_id} is outside the vocabulary [0, {len(self._id_bytes)})")
        return self._decoder.decode(self._id_bytes[token_id])

    def flush(self) -> str:
        """Whatever is pending (U+FFFD for a truncated character); resets the decoder."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text
