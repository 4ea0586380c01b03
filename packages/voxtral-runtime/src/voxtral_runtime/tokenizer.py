"""Tekken tokenizer, decode side only: model ids -> text, for whole sequences and token by token.

Speech-to-text only needs decoding, so this reads tekken.json directly (voxtral_format.tekken, the one parser)
instead of pulling in tiktoken or mistral-common. The rule (docs/spec.md §6): ids below `n_special` are control
tokens (BOS, EOS, [STREAMING_PAD], [STREAMING_WORD], ...) and never produce text; every other id maps to the raw
bytes of `vocab[id - n_special]`. Tokens are byte-level, so one UTF-8 character may span several tokens; the
streaming detokenizer keeps an incremental UTF-8 decoder so that only whole characters are emitted.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from voxtral_format import tekken
from voxtral_format.pte import TOKENIZER_FILE
from voxtral_format.tekken import TekkenError as TokenizerError

__all__ = ["StreamingDetokenizer", "Tekken", "TokenizerError"]


class Tekken:
    """Id -> bytes table of a tekken.json, plus the special ids the runtime needs."""

    def __init__(self, pieces: list[bytes], special: tekken.SpecialTokens):
        self.n_special = special.n_special
        self.vocab_size = special.n_special + len(pieces)
        # One bytes object per model id (b"" for control ids): the hot path is a list index.
        self.id_bytes: list[bytes] = [b""] * special.n_special + pieces
        self.special_ids = special.by_name
        self.bos_id = special.bos
        self.eos_id = special.eos
        self.streaming_pad_id = special.streaming_pad
        self.streaming_word_id = special.streaming_word

    @classmethod
    def load(cls, path: str | Path) -> Tekken:
        """Reads tekken.json (a file, or a model directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        return cls.from_dict(tekken.read(path), str(path))

    @classmethod
    def from_dict(cls, data: object, file: str = TOKENIZER_FILE) -> Tekken:
        """Builds the tokenizer from parsed tekken.json content; `file` is only used in error messages."""
        _, pieces = tekken.vocabulary(data, file)
        return cls(pieces, tekken.special_tokens(data, file))

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
