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
        """Raises ValueError naming the first option out of range."""
        for name in ("max_sessions", "max_message_bytes", "max_flushes"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("idle_timeout_s", "max_session_audio_s", "max_session_duration_s", "max_buffered_audio_s",
                     "max_offline_audio_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"--{name.removesuffix('_s').replace('_', '-')} must be a positive number of "
                                 f"seconds, got {value}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError("--max-new-tokens must be at least 1")

    def token_cap(self, meta: ModelMetadata) -> int:
        """The server's cap on tokens sampled per session: by default the most a session within the audio and flush
        limits can sample (one token per step over its audio, its leading silence and each flush's padding)."""
        if self.max_new_tokens:
            return self.max_new_tokens
        step_s = meta.step_samples / meta.sample_rate
        padding = meta.n_left_pad_tokens + (self.max_flushes + 1) * (meta.n_right_pad_tokens + 2)
        return math.ceil(self.max_session_audio_s / step_s) + padding
