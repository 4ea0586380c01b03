"""The .pte contract between voxtral-export and voxtral-runtime, declared once; docs/pte.md explains every item.

The export writes each field of `ModelMetadata` / `PreprocessorMetadata` as a constant method of its program, and the
runtime reads them back with `from_constants`, which checks every key and its type when the program loads: a program
that breaks the contract fails there, naming the key, never with a KeyError in the middle of a session. Torch-free on
purpose: the runtime never imports the model's code, and the export never imports the runtime's.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

FORMAT = "voxtral-realtime"
# 2: encode_audio_chunk takes 1..max_encoder_steps steps a call; 3: text_decoder returns the last position's logits;
# 4: streaming CPU programs call voxtral::ring_attention, a kernel the runtime provides (runtime_operators);
# 5: its ring caches may be bfloat16 (kv_cache_dtype), which an older runtime's kernel refuses. (shared_state came
# later without a new version: a runtime that does not know it loads each method apart, which is always correct.)
FORMAT_VERSION = 5
READABLE_VERSIONS = (2, 3, 4, 5)  # the runtime reads the last row of text_decoder's logits, so 2 still works

# A bundle directory: what voxtral-export --output-dir writes.
MODEL_FILE = "model.pte"
PREPROCESSOR_FILE = "preprocessor.pte"
TOKENIZER_FILE = "tekken.json"
MANIFEST_FILE = "manifest.json"

# model.pte's methods (docs/pte.md, "model.pte methods").
AUDIO_ENCODER = "audio_encoder"  # offline programs
ENCODE_AUDIO_CHUNK = "encode_audio_chunk"  # streaming programs
TEXT_DECODER = "text_decoder"
TOKEN_EMBEDDING = "token_embedding"
# preprocessor.pte's methods.
PREPROCESS = "forward"
PREPROCESS_STREAM = "stream_window"


class MetadataError(ValueError):
    """A program's constant methods do not match this contract; the message names the key."""


@dataclass(frozen=True)
class AudioMetadata:
    """Framing and log-mel facts, the same in model.pte and preprocessor.pte."""

    PROGRAM: ClassVar[str] = ""  # the `program` value, and the file it is in
    FILE: ClassVar[str] = ""

    pte_format: str
    pte_format_version: int
    program: str  # "model" or "preprocessor"
    sample_rate: int
    num_mel_bins: int
    hop_length: int
    window_size: int
    global_log_mel_max: float
    log_mel_floor: float
    step_samples: int  # samples per 80 ms step (one decoder token)
    chunk_mel_len: int  # mel frames per step
    stream_window_samples: int  # samples stream_window takes for one step
    stream_left_context: int  # of which before the step
    stream_lookahead: int  # and after it
    max_audio_tokens: int

    @classmethod
    def from_constants(cls, values: Mapping[str, object]) -> typing.Self:
        """The metadata in a program's constant methods ({name: value}); raises MetadataError for a program that is
        not ours, a format version this contract cannot read, and any missing key or value of the wrong type."""
        if values.get("pte_format") != FORMAT:
            raise MetadataError(f"not a Voxtral Realtime program (pte_format is {values.get('pte_format')!r}, "
                                f"expected {FORMAT!r}); export it with voxtral-export")
        version = values.get("pte_format_version")
        if version not in READABLE_VERSIONS:
            raise MetadataError(f"format version {version} is not supported (this runtime reads {READABLE_VERSIONS}); "
                                f"re-export the model or upgrade voxtral-runtime")
        if cls.PROGRAM and values.get("program") != cls.PROGRAM:
            raise MetadataError(f"this is the {values.get('program')} program, not {cls.FILE}")
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in values:
                if f.default is dataclasses.MISSING:
                    raise MetadataError(f"metadata key {f.name!r} is missing (format version {version}); re-export "
                                        f"the model with this version's voxtral-export")
                continue
            kwargs[f.name] = _checked(f.name, values[f.name], _field_types(cls)[f.name])
        return cls(**kwargs)

    def constants(self) -> dict[str, object]:
        """{name: value} for the program's constant methods."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PreprocessorMetadata(AudioMetadata):
    PROGRAM: ClassVar[str] = "preprocessor"
    FILE: ClassVar[str] = PREPROCESSOR_FILE


@dataclass(frozen=True)
class ModelMetadata(AudioMetadata):
    """What the runtime needs to drive model.pte, so it never needs the model's code."""

    PROGRAM: ClassVar[str] = "model"
    FILE: ClassVar[str] = MODEL_FILE

    streaming: bool
    backend: str  # xnnpack, portable, metal
    dtype: str  # fp32 or bf16 inside; inputs and outputs are fp32 either way
    quantization: str  # e.g. "encoder=8da4w/channel decoder=8da4w/channel embedding=8w", or "none"
    dim: int  # decoder width: audio and token embeddings
    enc_dim: int
    vocab_size: int
    downsample_factor: int  # encoder frames per decoder token
    max_seq_len: int  # positions of an offline decoder cache (a streaming ring cache has no bound)
    sliding_window: int  # decoder attention window in tokens
    max_enc_len: int  # encoder attention window in frames
    max_encoder_steps: int  # steps one encode_audio_chunk call takes at most (0 offline)
    encoder_block_tokens: int  # audio_encoder's input is a whole number of these blocks (offline)
    conv1_pad: int
    conv2_pad: int
    delay_tokens: int  # tokens the text lags the audio
    n_left_pad_tokens: int  # silent steps before the audio
    n_right_pad_tokens: int  # silent steps after it, so the last words come out
    bos_id: int
    eos_id: int
    streaming_pad_id: int
    streaming_word_id: int
    n_special_tokens: int
    runtime_operators: str = ""  # comma-separated operators of ours the program calls (format version 4)
    kv_cache_dtype: str = ""  # what the KV caches store, fp32 or bf16 (format version 5; before: dtype)
    # The methods' state (KV caches, conv state) has a memory arena of its own, apart from their activations, so the
    # methods of one load never overwrite each other's state (False when absent: older programs).
    shared_state: bool = False
    # Comma-separated fully qualified names of the buffers the methods write (KV caches, conv state), by which a
    # method's state can be read and restored: the runtime computes the leading silence and the prompt once and
    # copies that state into every new session ("" when absent: older programs and Metal's, whose sessions compute
    # their own; no new format version for the same reason as shared_state).
    state_buffers: str = ""

    @property
    def step_ms(self) -> int:
        return 1000 * self.step_samples // self.sample_rate

    @property
    def delay_ms(self) -> int:
        return self.delay_tokens * self.step_ms

    @property
    def prompt_ids(self) -> list[int]:
        """BOS, then a streaming pad for every left-pad and delay step: the tokens before the first real one."""
        return [self.bos_id] + [self.streaming_pad_id] * (self.n_left_pad_tokens + self.delay_tokens)


def _field_types(cls: type) -> dict[str, type]:
    return typing.get_type_hints(cls)


def _checked(name: str, value: object, kind: type) -> object:
    """`value` as `kind`; ints stand for floats, but bools never stand for numbers nor numbers for bools."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    raise MetadataError(f"metadata key {name!r} is {value!r}, expected a {kind.__name__}")
