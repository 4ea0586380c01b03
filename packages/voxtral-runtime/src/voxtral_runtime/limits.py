"""What one client may ask of the server: the limits `serve` enforces per session and reports in Describe.

Every limit is real (none is 0 = "unlimited") so that no client, careless or hostile, can hold a session slot or the
model forever, or make the server buffer without bound. Exceeding one ends the session with a Final of reason
SESSION_LIMIT (the audio accepted before is transcribed) and the status RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from voxtral_format.pte import ModelMetadata

from .engine import DEFAULT_MAX_OFFLINE_AUDIO_S

DEFAULT_MAX_SESSIONS = 4
DEFAULT_IDLE_TIMEOUT_S = 30.0
DEFAULT_MAX_MESSAGE_BYTES = 4 << 20
DEFAULT_MAX_SESSION_AUDIO_S = 4 * 3600.0  # one long meeting
DEFAULT_MAX_SESSION_DURATION_S = 8 * 3600.0  # wall time: twice the audio limit, so a slow device still finishes
DEFAULT_MAX_FLUSHES = 1000  # each flush pads 1.4 s of silence through the model: ~25 min of model time at most
DEFAULT_MAX_BUFFERED_AUDIO_S = 10.0  # audio held ahead of the model before the server stops reading the stream


@dataclass(frozen=True)
class Limit:
    """One limit as `serve` takes it: the ServerOptions field, its command-line flag, type and help."""

    field: str
    flag: str
    type: type
    help: str


LIMITS = (
    Limit("max_sessions", "--max-sessions", int, "concurrent sessions; each holds its own program instance"),
    Limit("idle_timeout_s", "--idle-timeout", float, "seconds without audio or a control before a session ends; "
                                                     "empty audio messages do not count"),
    Limit("max_message_bytes", "--max-message-bytes", int, "largest accepted request message"),
    Limit("max_session_audio_s", "--max-session-audio", float, "seconds of audio one session may send; the audio "
          "up to it is transcribed, then the session ends with RESOURCE_EXHAUSTED"),
    Limit("max_session_duration_s", "--max-session-duration", float, "wall-clock seconds one session may last"),
    Limit("max_flushes", "--max-flushes", int, "flush controls one session may send"),
    Limit("max_buffered_audio_s", "--max-buffered-audio", float, "seconds of audio held ahead of the model per "
          "session; beyond it the server stops reading and gRPC flow control slows the client"),
    Limit("max_offline_audio_s", "--max-offline-audio", float, "seconds of audio in one offline-mode segment (an "
          "offline program may hold less)"),
    Limit("max_new_tokens", "--max-new-tokens", int, "tokens one session may sample (default: the most its audio "
          "and flush limits allow)"),
)


@dataclass(frozen=True)
class ServerOptions:
    max_sessions: int = DEFAULT_MAX_SESSIONS
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_session_audio_s: float = DEFAULT_MAX_SESSION_AUDIO_S
    max_session_duration_s: float = DEFAULT_MAX_SESSION_DURATION_S
    max_flushes: int = DEFAULT_MAX_FLUSHES
    max_buffered_audio_s: float = DEFAULT_MAX_BUFFERED_AUDIO_S
    max_offline_audio_s: float = DEFAULT_MAX_OFFLINE_AUDIO_S
    max_new_tokens: int | None = None  # None: what the audio and flush limits allow (token_cap)
    token: str | None = None

    def check(self) -> None:
        """Raises ValueError naming the first option out of range (by its flag)."""
        for limit in LIMITS:
            value = getattr(self, limit.field)
            if value is None:  # max_new_tokens: derived from the other limits
                continue
            if limit.type is int and value < 1:
                raise ValueError(f"{limit.flag} must be at least 1")
            if limit.type is float and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{limit.flag} must be a positive number of seconds, got {value}")

    def token_cap(self, meta: ModelMetadata) -> int:
        """The server's cap on tokens sampled per session: by default the most a session within the audio and flush
        limits can sample (one token per step over its audio, its leading silence and each flush's padding)."""
        if self.max_new_tokens:
            return self.max_new_tokens
        step_s = meta.step_samples / meta.sample_rate
        padding = meta.n_left_pad_tokens + (self.max_flushes + 1) * (meta.n_right_pad_tokens + 2)
        return math.ceil(self.max_session_audio_s / step_s) + padding
