"""Server-side endpointing: a voice activity detector in front of a streaming session (docs/runtime.md, "Endpointing").

Opt-in per session. Silero VAD scores every 32 ms frame. While there is speech, audio goes to the model as usual. When
speech has been absent for `silence_ms`, the session flushes (the pending words come out, then a segment end with
reason ENDPOINT; the flush pads that much less silence, since the model has just heard it) and the model stops
running: until speech comes back, audio is only scored, and its time is skipped in the session's timeline (timestamps
stay those of the client's audio). When speech resumes, the last `prefix_ms` before it are sent first, so the first
syllable is not cut. Without endpointing the model hears every sample, as in Mistral's reference; with it, a long
pause costs the detector instead of the model, which is how a slow device catches up.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np
import torch

from .session import END_OF_AUDIO, ENDPOINT, SessionError, StreamingSession

VAD_SAMPLE_RATE = 16000  # Silero VAD's rate for 512-sample frames; the model's rate too
FRAME_SAMPLES = 512  # 32 ms: the frame Silero VAD is trained on at 16 kHz
HYSTERESIS = 0.15  # speech ends below threshold - 0.15, as in Silero's own VADIterator


@dataclass(frozen=True)
class EndpointingOptions:
    """The names and defaults of OpenAI's server_vad turn detection (which vLLM's clients send)."""

    threshold: float = 0.5  # speech probability at which speech starts
    silence_ms: int = 500  # pause that ends a segment
    prefix_ms: int = 300  # audio sent before the speech that resumes the model

    MIN_SILENCE_MS = 100
    MAX_SILENCE_MS = 10_000
    MAX_PREFIX_MS = 2_000

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"endpointing threshold must be between 0 and 1 (exclusive), got {self.threshold}")
        if not self.MIN_SILENCE_MS <= self.silence_ms <= self.MAX_SILENCE_MS:
            raise ValueError(f"endpointing silence must be {self.MIN_SILENCE_MS}-{self.MAX_SILENCE_MS} ms, got "
                             f"{self.silence_ms}")
        if not 0 <= self.prefix_ms <= self.MAX_PREFIX_MS:
            raise ValueError(f"endpointing prefix must be 0-{self.MAX_PREFIX_MS} ms, got {self.prefix_ms}")


class SileroDetector:
    """Speech probability of consecutive 512-sample frames at 16 kHz; keeps its own recurrent state, so one per
    session (loading it takes about 30 ms, scoring a frame about 0.4 ms of one core)."""

    def __init__(self):
        from silero_vad import load_silero_vad

        self.model = load_silero_vad()

    def __call__(self, frame: np.ndarray) -> float:
        with torch.inference_mode():
            return float(self.model(torch.from_numpy(frame), VAD_SAMPLE_RATE))


class EndpointingSession:
    """A streaming session behind a voice activity detector. Starts silent: the model runs from the first speech."""

    def __init__(self, inner: StreamingSession, options: EndpointingOptions, detector=None):
        if inner.rate != VAD_SAMPLE_RATE:
            raise SessionError(f"endpointing needs {VAD_SAMPLE_RATE} Hz audio; this model takes {inner.rate} Hz")
        self.inner, self.options = inner, options
        self.detector = detector or SileroDetector()
        self.silence_frames = -(-options.silence_ms * VAD_SAMPLE_RATE // 1000 // FRAME_SAMPLES)
        # whole steps of the pause the model has heard at an endpoint, which its flush need not pad again
        self.silence_tokens = self.silence_frames * FRAME_SAMPLES // inner.tok
        self.prefix = collections.deque(maxlen=options.prefix_ms * VAD_SAMPLE_RATE // 1000 // FRAME_SAMPLES)
        self.partial = np.zeros(0, dtype=np.float32)  # less than a frame, waiting for the rest
        self.speaking = False
        self.quiet_frames = 0  # frames since speech last fell below threshold - hysteresis, while speaking
        self.skipped_samples = 0  # client audio the model never ran on

    def __getattr__(self, name: str):
        """Progress and counters (audio_processed_s, steps_computed, ...) and prepare are the inner session's."""
        return getattr(self.inner, name)

    def feed(self, samples: np.ndarray) -> list:
        samples = self.inner.check_audio(samples)
        if len(self.partial):  # the rest of a frame begun in the last call
            samples = np.concatenate([self.partial, samples])
        whole = len(samples) - len(samples) % FRAME_SAMPLES
        self.partial = samples[whole:].copy()
        events: list = []
        speech: list[np.ndarray] = []  # consecutive frames for the model, fed in one call (encoder batching)
        for start in range(0, whole, FRAME_SAMPLES):
            frame = samples[start : start + FRAME_SAMPLES]
            probability = self.detector(frame)
            if self.speaking:
                speech.append(frame)
                if probability >= self.options.threshold:
                    self.quiet_frames = 0
                elif probability < self.options.threshold - HYSTERESIS or self.quiet_frames:
                    self.quiet_frames += 1
                if self.quiet_frames >= self.silence_frames:
                    events += self._feed_model(speech)
                    speech = []
                    events += self.inner.flush(ENDPOINT, self.silence_tokens)
                    self.speaking, self.quiet_frames = False, 0
            elif probability >= self.options.threshold:
                self.speaking = True
                speech += [*self.prefix, frame]
                self.prefix.clear()
            elif not self.prefix.maxlen:
                self._skip(len(frame))
            else:
                if len(self.prefix) == self.prefix.maxlen:
                    self._skip(len(self.prefix[0]))  # the oldest kept frame is too old to be a prefix now
                self.prefix.append(frame)
        events += self._feed_model(speech)
        return events

    def _feed_model(self, frames: list[np.ndarray]) -> list:
        return self.inner.feed(np.concatenate(frames)) if frames else []

    def _skip(self, n: int) -> None:
        self.skipped_samples += n
        self.inner.skip(n)

    def _settle(self) -> list:
        """Before a flush or the end: what is held goes to the model while speaking, and is skipped otherwise."""
        held = [*self.prefix, self.partial]
        self.prefix.clear()
        self.partial = np.zeros(0, dtype=np.float32)
        if self.speaking:
            return self._feed_model(held)
        self._skip(sum(len(h) for h in held))
        return []

    def flush(self) -> list:
        events = self._settle()
        self.speaking, self.quiet_frames = False, 0
        return events + self.inner.flush()

    def finish(self, reason: str = END_OF_AUDIO) -> list:
        return self._settle() + self.inner.finish(reason, idle_tail=False)
