"""Loading exported programs: their metadata (voxtral_format.pte, docs/pte.md), the shared spec, method handles.

A loaded program keeps its methods' state (KV caches, conv state) inside, so every concurrent session needs its own
`ModelInstance`; the metadata and tokenizer are read once into a shared `ModelSpec`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
from voxtral_format import pte  # the method names: pte.TEXT_DECODER, ...
from voxtral_format.pte import AudioMetadata, MetadataError, ModelMetadata, PreprocessorMetadata

from . import kernels
from .bundle import BundlePaths, ProgramError, model_name, verify_files
from .tokenizer import Tekken, TokenizerError
from .xnnpack_weights import BackendOptionError, set_weight_sharing

log = logging.getLogger("voxtral_runtime")
Metadata = TypeVar("Metadata", bound=AudioMetadata)

# XNNPACK's shared weight cache is process-wide state that every load fills or looks up; upstream ExecuTorch later
# widened its lock to cover a whole load, so here instances load one at a time (a load takes seconds and instances
# are pooled; session steps never take this lock).
_LOAD_LOCK = threading.Lock()


def _register_kernels() -> None:
    """Kernels for ExecuTorch's llama custom ops and quantized embeddings must be registered before loading."""
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401
    from executorch.kernels import quantized  # noqa: F401


def _register_runtime_operators(path: Path, operators: str) -> None:
    """Compiles (once per machine) and registers the kernels of our own operators that the program calls."""
    wanted = [name for name in operators.split(",") if name]
    if not wanted:
        return
    missing = [name for name in wanted if name not in kernels.OPERATORS]
    if missing:
        raise ProgramError(f"{path} calls {', '.join(missing)}, which this runtime does not provide; upgrade "
                           f"voxtral-runtime or re-export with this version's voxtral-export")
    try:
        kernels.load()
    except kernels.KernelBuildError as e:
        raise ProgramError(f"{path} needs the runtime's own kernels: {e}") from e


def _load(path: Path):
    from executorch.runtime import Runtime

    try:
        return Runtime.get().load_program(str(path))
    except Exception as e:  # the runtime raises RuntimeError/ValueError with terse codes
        raise ProgramError(f"{path}: not a loadable ExecuTorch program ({e})") from e


def read_metadata(program, path: Path, kind: type[Metadata]) -> Metadata:
    """The program's constant methods as `kind`, every key and type checked (voxtral_format.pte). Loads only the
    zero-input methods, so no delegate is initialised yet."""
    names = set(program.method_names)
    if "pte_format" not in names:
        raise ProgramError(f"{path}: not a Voxtral Realtime program (no 'pte_format' metadata); export it with "
                           f"voxtral-export")
    constants = {}
    for name in names:
        method = program.load_method(name)
        if method.metadata.num_inputs() == 0:
            constants[name] = method.execute([])[0]
    try:
        return kind.from_constants(constants)
    except MetadataError as e:
        raise ProgramError(f"{path}: {e}") from e


@dataclass(frozen=True)
class ModelSpec:
    """Everything about the served model that sessions share: file paths, metadata, tokenizer."""

    paths: BundlePaths
    meta: ModelMetadata
    preprocessor_meta: PreprocessorMetadata
    tokenizer: Tekken
    methods: frozenset = field(default_factory=frozenset)
    shares_weights: bool = False  # instances share one copy of XNNPACK's packed weights
    model_name: str = ""  # the checkpoint directory the bundle was exported from (its manifest's source)

    @property
    def streaming(self) -> bool:
        return self.meta.streaming

    @property
    def max_offline_segment_samples(self) -> int:
        """Client samples one pass of an offline program can hold: its tokens less the prompt and padding."""
        m = self.meta
        reserved = m.n_left_pad_tokens + m.n_right_pad_tokens + 1
        return (min(m.max_seq_len, m.max_audio_tokens) - reserved) * m.step_samples

    @property
    def max_offline_segment_s(self) -> float:
        return self.max_offline_segment_samples / self.meta.sample_rate

    @property
    def prompt_ids(self) -> list[int]:
        return self.meta.prompt_ids

    def describe(self) -> dict:
        m = self.meta
        return {
            "model": str(self.paths.model), "backend": m.backend, "quantization": m.quantization, "dtype": m.dtype,
            "kv_cache_dtype": m.kv_cache_dtype or m.dtype, "streaming": self.streaming, "delay_ms": m.delay_ms,
            "step_ms": m.step_ms,
            "decoder_window_tokens": m.sliding_window, "encoder_window_frames": m.max_enc_len,
            "max_seq_len": m.max_seq_len, "vocab_size": m.vocab_size, "sample_rate": m.sample_rate,
        }


def share_packed_weights(enabled: bool) -> bool:
    """Every instance loaded from now on shares one copy of XNNPACK's packed weights (see xnnpack_weights.py).

    Without it each session holds its own copy (1.27x model.pte of private memory). Returns whether sharing is on; a
    runtime whose backend options cannot be set still works, with the per-session cost, and says so in the log.
    """
    try:
        set_weight_sharing(enabled)
    except BackendOptionError as e:
        if enabled:
            log.warning("XNNPACK weights are not shared between sessions, each holds its own copy: %s", e)
        return False
    return enabled


def load_spec(paths: BundlePaths, share_weights: bool = True, verify: bool = True) -> ModelSpec:
    """Reads and checks the bundle's files, metadata and tokenizer; `share_weights`: see `share_packed_weights`;
    `verify`: see `verify_files`."""
    _register_kernels()
    if verify:
        verify_files(paths)
    model = _load(paths.model)
    # Our kernels first: reading the constants loads every method, and ExecuTorch refuses a method whose operators
    # have no kernel. A build failure only matters for programs that call our operators.
    try:
        kernels.load()
        kernel_error = None
    except kernels.KernelBuildError as e:
        kernel_error = e
    try:
        meta = read_metadata(model, paths.model, ModelMetadata)  # only the metadata methods: no delegate yet
    except RuntimeError as e:
        if kernel_error is not None:
            raise ProgramError(f"{paths.model} needs the runtime's own kernels: {kernel_error}") from e
        raise
    _register_runtime_operators(paths.model, meta.runtime_operators)
    shares_weights = meta.backend == "xnnpack" and share_packed_weights(share_weights)
    pre = _load(paths.preprocessor)
    pre_meta = read_metadata(pre, paths.preprocessor, PreprocessorMetadata)
    for key in ("sample_rate", "num_mel_bins", "hop_length", "step_samples", "stream_window_samples",
                "log_mel_floor"):
        if getattr(meta, key) != getattr(pre_meta, key):
            raise ProgramError(f"{paths.preprocessor} does not belong to {paths.model}: {key} is "
                               f"{getattr(pre_meta, key)} there and {getattr(meta, key)} in the model")
    try:
        tokenizer = Tekken.load(paths.tokenizer)
        tokenizer.check_vocab_size(meta.vocab_size)
    except TokenizerError as e:
        raise ProgramError(str(e)) from e
    if (tokenizer.bos_id, tokenizer.eos_id) != (meta.bos_id, meta.eos_id):
        raise ProgramError(f"{paths.tokenizer}: BOS/EOS ids {tokenizer.bos_id}/{tokenizer.eos_id} differ from the "
                           f"program's {meta.bos_id}/{meta.eos_id}")
    return ModelSpec(paths=paths, meta=meta, preprocessor_meta=pre_meta, tokenizer=tokenizer,
                     methods=frozenset(model.method_names), shares_weights=shares_weights,
                     model_name=model_name(paths))


class ModelInstance:
    """One session's loaded programs and method handles (own KV caches and conv state)."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        # The methods of one loaded program share its planned-memory arenas (executorch.runtime.Program.load_method).
        # A program that plans its state apart (shared_state: KV caches and conv state in an arena of their own, one
        # place per buffer) is loaded once for all its methods. Older programs keep state among
        # activations, where one method's call overwrites another's state (a decoder call the streaming encoder's
        # caches: NaN; at full size a token_embedding call part of the decoder's: logits off by up to 0.35, garbage
        # with bf16 caches; benchmarks/accuracy.py found it): each stateful method then gets a load of its own. The
        # file is memory-mapped and each method's weights load once, so extra loads add planned memory only.
        with _LOAD_LOCK:
            encoder_program = _load(spec.paths.model)
            if spec.meta.shared_state:
                decoder_program = embedding_program = encoder_program
            else:
                decoder_program, embedding_program = _load(spec.paths.model), _load(spec.paths.model)
            pre = _load(spec.paths.preprocessor)
            if spec.streaming:
                self.encode_chunk = encoder_program.load_method(pte.ENCODE_AUDIO_CHUNK)
                self.stream_window = pre.load_method(pte.PREPROCESS_STREAM)
            else:
                self.audio_encoder = encoder_program.load_method(pte.AUDIO_ENCODER)
                self.preprocess = pre.load_method(pte.PREPROCESS)
            self.text_decoder = decoder_program.load_method(pte.TEXT_DECODER)
            self.token_embedding = embedding_program.load_method(pte.TOKEN_EMBEDDING)
        self.state = self._state_tensors()

    def _state_tensors(self) -> list[torch.Tensor]:
        """The buffers `spec.meta.state_buffers` names, in that order, as tensors over the program's own memory
        (writing one writes the method's state), or [] when the program names none. Checked completely: a buffer
        left out would keep whatever the last session left in it when a start state is restored (start_state.py)."""
        names = [name for name in self.spec.meta.state_buffers.split(",") if name]
        if not names:
            return []
        methods = {name: getattr(self, attribute) for name, attribute in
                   ((pte.ENCODE_AUDIO_CHUNK, "encode_chunk"), (pte.AUDIO_ENCODER, "audio_encoder"),
                    (pte.TEXT_DECODER, "text_decoder"), (pte.TOKEN_EMBEDDING, "token_embedding"))
                   if hasattr(self, attribute)}
        found: dict[str, torch.Tensor] = {}
        for method_name, method in methods.items():
            count = 0
            for name in names:
                try:  # executorch.runtime.Method does not wrap get_attribute (1.5); its pybinding method does
                    tensor = method._method.get_attribute(name)
                except RuntimeError:
                    continue
                found.setdefault(name, tensor)
                count += 1
            if count != method.metadata.num_attributes():
                raise ProgramError(f"{self.spec.paths.model}: its metadata's state_buffers name {count} of the "
                                   f"{method.metadata.num_attributes()} state buffers of {method_name}; re-export it")
        missing = [name for name in names if name not in found]
        if missing:
            raise ProgramError(f"{self.spec.paths.model}: state buffer {missing[0]!r} (metadata state_buffers) is in "
                               f"no method; re-export it")
        return [found[name] for name in names]

    @staticmethod
    def run(method, *inputs: torch.Tensor) -> torch.Tensor:
        """The method's first output: a tensor of its own (executorch.runtime copies outputs out of the method's
        planned memory, which the program's next call reuses)."""
        return method.execute(list(inputs))[0]
