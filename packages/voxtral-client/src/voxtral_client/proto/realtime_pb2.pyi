from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AudioEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_ENCODING_UNSPECIFIED: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_PCM16LE: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_F32LE: _ClassVar[AudioEncoding]

class TranscriptionMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSCRIPTION_MODE_UNSPECIFIED: _ClassVar[TranscriptionMode]
    TRANSCRIPTION_MODE_STREAMING: _ClassVar[TranscriptionMode]
    TRANSCRIPTION_MODE_OFFLINE: _ClassVar[TranscriptionMode]

class Control(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTROL_UNSPECIFIED: _ClassVar[Control]
    CONTROL_FLUSH: _ClassVar[Control]

class FinalReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINAL_REASON_UNSPECIFIED: _ClassVar[FinalReason]
    FINAL_REASON_FLUSH: _ClassVar[FinalReason]
    FINAL_REASON_END_OF_AUDIO: _ClassVar[FinalReason]
    FINAL_REASON_MODEL_EOS: _ClassVar[FinalReason]
    FINAL_REASON_MAX_NEW_TOKENS: _ClassVar[FinalReason]
    FINAL_REASON_SERVER_SHUTDOWN: _ClassVar[FinalReason]
    FINAL_REASON_SESSION_LIMIT: _ClassVar[FinalReason]
    FINAL_REASON_ENDPOINT: _ClassVar[FinalReason]

class ProgramKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROGRAM_KIND_UNSPECIFIED: _ClassVar[ProgramKind]
    PROGRAM_KIND_STREAMING: _ClassVar[ProgramKind]
    PROGRAM_KIND_OFFLINE: _ClassVar[ProgramKind]
AUDIO_ENCODING_UNSPECIFIED: AudioEncoding
AUDIO_ENCODING_PCM16LE: AudioEncoding
AUDIO_ENCODING_F32LE: AudioEncoding
TRANSCRIPTION_MODE_UNSPECIFIED: TranscriptionMode
TRANSCRIPTION_MODE_STREAMING: TranscriptionMode
TRANSCRIPTION_MODE_OFFLINE: TranscriptionMode
CONTROL_UNSPECIFIED: Control
CONTROL_FLUSH: Control
FINAL_REASON_UNSPECIFIED: FinalReason
FINAL_REASON_FLUSH: FinalReason
FINAL_REASON_END_OF_AUDIO: FinalReason
FINAL_REASON_MODEL_EOS: FinalReason
FINAL_REASON_MAX_NEW_TOKENS: FinalReason
FINAL_REASON_SERVER_SHUTDOWN: FinalReason
FINAL_REASON_SESSION_LIMIT: FinalReason
FINAL_REASON_ENDPOINT: FinalReason
PROGRAM_KIND_UNSPECIFIED: ProgramKind
PROGRAM_KIND_STREAMING: ProgramKind
PROGRAM_KIND_OFFLINE: ProgramKind

class TranscribeRequest(_message.Message):
    __slots__ = ("config", "audio", "control")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    config: SessionConfig
    audio: bytes
    control: Control
    def __init__(self, config: _Optional[_Union[SessionConfig, _Mapping]] = ..., audio: _Optional[bytes] = ..., control: _Optional[_Union[Control, str]] = ...) -> None: ...

class SessionConfig(_message.Message):
    __slots__ = ("encoding", "sample_rate_hz", "mode", "token_ids", "temperature", "seed", "max_new_tokens", "endpointing")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTING_FIELD_NUMBER: _ClassVar[int]
    encoding: AudioEncoding
    sample_rate_hz: int
    mode: TranscriptionMode
    token_ids: bool
    temperature: float
    seed: int
    max_new_tokens: int
    endpointing: Endpointing
    def __init__(self, encoding: _Optional[_Union[AudioEncoding, str]] = ..., sample_rate_hz: _Optional[int] = ..., mode: _Optional[_Union[TranscriptionMode, str]] = ..., token_ids: _Optional[bool] = ..., temperature: _Optional[float] = ..., seed: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., endpointing: _Optional[_Union[Endpointing, _Mapping]] = ...) -> None: ...

class Endpointing(_message.Message):
    __slots__ = ("threshold", "silence_duration_ms", "prefix_padding_ms")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SILENCE_DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_PADDING_MS_FIELD_NUMBER: _ClassVar[int]
    threshold: float
    silence_duration_ms: int
    prefix_padding_ms: int
    def __init__(self, threshold: _Optional[float] = ..., silence_duration_ms: _Optional[int] = ..., prefix_padding_ms: _Optional[int] = ...) -> None: ...

class TranscribeResponse(_message.Message):
    __slots__ = ("started", "delta", "final", "audio_processed_s", "audio_received_s")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    AUDIO_PROCESSED_S_FIELD_NUMBER: _ClassVar[int]
    AUDIO_RECEIVED_S_FIELD_NUMBER: _ClassVar[int]
    started: SessionStarted
    delta: TextDelta
    final: Final
    audio_processed_s: float
    audio_received_s: float
    def __init__(self, started: _Optional[_Union[SessionStarted, _Mapping]] = ..., delta: _Optional[_Union[TextDelta, _Mapping]] = ..., final: _Optional[_Union[Final, _Mapping]] = ..., audio_processed_s: _Optional[float] = ..., audio_received_s: _Optional[float] = ...) -> None: ...

class SessionStarted(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class TextDelta(_message.Message):
    __slots__ = ("text", "start_s", "end_s", "step", "token_ids")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    text: str
    start_s: float
    end_s: float
    step: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, text: _Optional[str] = ..., start_s: _Optional[float] = ..., end_s: _Optional[float] = ..., step: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class Final(_message.Message):
    __slots__ = ("reason", "text", "start_s", "end_s")
    REASON_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    reason: FinalReason
    text: str
    start_s: float
    end_s: float
    def __init__(self, reason: _Optional[_Union[FinalReason, str]] = ..., text: _Optional[str] = ..., start_s: _Optional[float] = ..., end_s: _Optional[float] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelDescription(_message.Message):
    __slots__ = ("model", "server_version", "backend", "quantization", "dtype", "program", "delay_ms", "step_ms", "model_sample_rate_hz", "min_sample_rate_hz", "max_sample_rate_hz", "encodings", "vocab_size", "encoder_window_frames", "decoder_window_tokens", "max_seq_len", "limits")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    STEP_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    MIN_SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    MAX_SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    ENCODINGS_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    ENCODER_WINDOW_FRAMES_FIELD_NUMBER: _ClassVar[int]
    DECODER_WINDOW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    model: str
    server_version: str
    backend: str
    quantization: str
    dtype: str
    program: ProgramKind
    delay_ms: int
    step_ms: int
    model_sample_rate_hz: int
    min_sample_rate_hz: int
    max_sample_rate_hz: int
    encodings: _containers.RepeatedScalarFieldContainer[AudioEncoding]
    vocab_size: int
    encoder_window_frames: int
    decoder_window_tokens: int
    max_seq_len: int
    limits: ServerLimits
    def __init__(self, model: _Optional[str] = ..., server_version: _Optional[str] = ..., backend: _Optional[str] = ..., quantization: _Optional[str] = ..., dtype: _Optional[str] = ..., program: _Optional[_Union[ProgramKind, str]] = ..., delay_ms: _Optional[int] = ..., step_ms: _Optional[int] = ..., model_sample_rate_hz: _Optional[int] = ..., min_sample_rate_hz: _Optional[int] = ..., max_sample_rate_hz: _Optional[int] = ..., encodings: _Optional[_Iterable[_Union[AudioEncoding, str]]] = ..., vocab_size: _Optional[int] = ..., encoder_window_frames: _Optional[int] = ..., decoder_window_tokens: _Optional[int] = ..., max_seq_len: _Optional[int] = ..., limits: _Optional[_Union[ServerLimits, _Mapping]] = ...) -> None: ...

class ServerLimits(_message.Message):
    __slots__ = ("max_sessions", "active_sessions", "max_message_bytes", "idle_timeout_s", "max_session_audio_s", "max_offline_audio_s", "max_new_tokens", "auth_required", "max_session_duration_s", "max_flushes", "max_buffered_audio_s")
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSION_AUDIO_S_FIELD_NUMBER: _ClassVar[int]
    MAX_OFFLINE_AUDIO_S_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    AUTH_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSION_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    MAX_FLUSHES_FIELD_NUMBER: _ClassVar[int]
    MAX_BUFFERED_AUDIO_S_FIELD_NUMBER: _ClassVar[int]
    max_sessions: int
    active_sessions: int
    max_message_bytes: int
    idle_timeout_s: float
    max_session_audio_s: float
    max_offline_audio_s: float
    max_new_tokens: int
    auth_required: bool
    max_session_duration_s: float
    max_flushes: int
    max_buffered_audio_s: float
    def __init__(self, max_sessions: _Optional[int] = ..., active_sessions: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., idle_timeout_s: _Optional[float] = ..., max_session_audio_s: _Optional[float] = ..., max_offline_audio_s: _Optional[float] = ..., max_new_tokens: _Optional[int] = ..., auth_required: _Optional[bool] = ..., max_session_duration_s: _Optional[float] = ..., max_flushes: _Optional[int] = ..., max_buffered_audio_s: _Optional[float] = ...) -> None: ...
