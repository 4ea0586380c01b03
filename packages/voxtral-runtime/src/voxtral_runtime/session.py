"""The inference session: Mistral's reference schedule over loaded ExecuTorch programs (docs/spec.md Appendix D).

Audio is framed in "padded-stream" coordinates: 32 tokens of silence, then the client's audio, then, at a flush or
the end, silence up to a whole token plus 17 tokens (delay + 1 + 10) so the delayed last words come out. Step s
needs padded samples up to 1280 s + 1320; it encodes one 80 ms token and feeds the decoder at position s: the
prompt (BOS + 38 [STREAMING_PAD]) over steps 0..38 as one batched prefill, then the previously sampled token.

Live-stream policy (documented in docs/runtime.md): the model's EOS in the middle of a live stream ends a segment
but not the session: an event marks it, [STREAMING_PAD] ("nothing new") is fed back instead of EOS and decoding
goes on. The streaming decoder's ring cache and on-the-fly RoPE make positions unbounded, so a session can run for
hours with flat memory. At the end of the audio, EOS stops decoding as in the reference.
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass, field

import numpy as np
import torch

from .audio import AudioError, check_float_range
from .programs import ModelInstance, ModelSpec
from .sampling import Sampler
from .start_state import StartState
from .tokenizer import StreamingDetokenizer

FLUSH, END_OF_AUDIO, MODEL_EOS, MAX_NEW_TOKENS = "flush", "end_of_audio", "model_eos", "max_new_tokens"
ENDPOINT = "endpoint"  # a pause ended the segment (endpointing.py)
# Reasons a caller gives `finish` when the audio is cut rather than ended by the client.
SERVER_SHUTDOWN, SESSION_LIMIT = "server_shutdown", "session_limit"


class State(enum.Enum):
    """Where a session is. DECODING -> STOPPED when the token cap is reached or the model ends the audio with EOS;
    DECODING or STOPPED -> FINISHED at `finish`. An offline session goes back from STOPPED to DECODING at its next
    segment unless the cap was reached (each segment's EOS ends only that segment)."""

    DECODING = "decoding"  # each step samples a token
    STOPPED = "stopped"  # steps consume audio without running the model
    FINISHED = "finished"  # no more audio, flush or finish


class Tail(enum.Enum):
    """What the audio being decoded is, which decides what the model's EOS means (Session._token_events)."""

    LIVE = "live"  # client audio: EOS ends a segment, decoding goes on
    FLUSH = "flush"  # a flush's padding: the flush's own event ends the segment
    END = "end"  # the end of the audio: EOS stops decoding, as in the reference


class SessionError(ValueError):
    """Bad input to a session (wrong audio, audio after the end, too long for an offline program)."""


class SessionLimit(SessionError):
    """Input beyond what the session can hold (an offline segment longer than the program or buffer allows)."""


class ModelFault(RuntimeError):
    """The programs produced NaN or infinity. The session cannot go on, and its instance must not serve another
    session: the non-finite values may sit in its caches, where even a masked slot poisons attention (0 * NaN)."""


def require_finite(output: torch.Tensor, what: str) -> torch.Tensor:
    """Checks every call's output. That is enough to keep caches clean: a call writes its keys and values before
    its queries attend, and each query sees its own position, so a non-finite value written into a cache shows in
    the output of the call that wrote it. A sum is finite iff every element is (finite outputs never overflow it)
    and costs a few microseconds, against hundreds for isfinite().all() on the vocabulary's logits."""
    if not torch.isfinite(output.sum()):
        raise ModelFault(f"the {what} produced non-finite values")
    return output


@dataclass
class TextPiece:
    """Newly decoded text and the client-audio span (seconds) it belongs to."""

    text: str
    start_s: float
    end_s: float
    step: int  # decoder step over client audio: padded step minus the left padding
    token_ids: list[int] = field(default_factory=list)


@dataclass
class SegmentEnd:
    reason: str
    text: str
    start_s: float
    end_s: float


class Timeline:
    """Maps padded-stream sample positions to seconds of client audio (server-inserted silence takes no time)."""

    def __init__(self, left_pad: int, sample_rate: int):
        self.sample_rate = sample_rate
        self.starts = [left_pad]  # padded position where each run of client audio starts
        self.client_before = [0]  # client samples before that run
        self.lengths: list[int | None] = [None]  # client samples in each run (None: the run still growing)

    def insert_silence(self, at: int, client_samples: int, n: int) -> None:
        self.lengths[-1] = client_samples - self.client_before[-1]
        self.starts.append(at + n)
        self.client_before.append(client_samples)
        self.lengths.append(None)

    def skip(self, at: int, client_samples: int, n: int) -> None:
        """`n` client samples after the first `client_samples` never enter the padded stream, which goes on at `at`.
        Skips with no padded audio between them extend one run, so hours of skipped silence take no memory."""
        if self.starts[-1] == at and self.lengths[-1] is None:
            self.client_before[-1] += n
            return
        self.lengths[-1] = client_samples - self.client_before[-1]
        self.starts.append(at)
        self.client_before.append(client_samples + n)
        self.lengths.append(None)

    def seconds(self, padded: int) -> float:
        """Inside inserted silence, time stands at the end of the audio before it."""
        i = max(bisect.bisect_right(self.starts, padded) - 1, 0)
        offset = max(padded - self.starts[i], 0)
        if self.lengths[i] is not None:
            offset = min(offset, self.lengths[i])
        return (self.client_before[i] + offset) / self.sample_rate


class TokenLoop:
    """Decoder side of a session: prompt prefill, then one sampled token per audio embedding.

    The prompt's rows are collected until the last one, which is sampled; `prefill_pending` runs the rows collected
    so far early (a live session runs those of the leading silence before its first audio arrives)."""

    def __init__(self, instance: ModelInstance, prompt_embeds: torch.Tensor, sampler: Sampler):
        self.instance, self.sampler = instance, sampler
        meta = instance.spec.meta
        self.prompt_embeds = prompt_embeds  # (1, P, dim), shared by all sessions
        self.prompt_len = prompt_embeds.shape[1]
        self.eos, self.pad = meta.eos_id, meta.streaming_pad_id
        self.position = 0
        self.pending: list[torch.Tensor] = []
        self.next_input = self.pad
        self.token_tensor = torch.zeros(1, 1, dtype=torch.int64)
        self.position_tensor = torch.zeros(1, dtype=torch.int64)

    def reset(self) -> None:
        self.position, self.pending, self.next_input = 0, [], self.pad

    def prefill_pending(self) -> None:
        """Runs the prompt rows collected so far through the decoder; their logits are not sampled."""
        if self.pending:
            self._prefill(self.pending)

    def _prefill(self, rows: list[torch.Tensor]) -> torch.Tensor:
        start = self.position - len(rows)
        audio = rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)
        self.pending = []
        logits = self.instance.run(self.instance.text_decoder, audio + self.prompt_embeds[:, start : self.position],
                                   torch.arange(start, self.position))
        return require_finite(logits[0, -1], "text decoder")

    def step(self, audio_embed: torch.Tensor) -> int | None:
        """audio_embed (1, 1, dim) for the next position -> the sampled token, or None while the prompt fills."""
        run = self.instance.run
        position = self.position
        self.position += 1
        if position < self.prompt_len - 1:
            self.pending.append(audio_embed)
            return None
        if position == self.prompt_len - 1:
            last = self._prefill([*self.pending, audio_embed])
        else:
            self.token_tensor[0, 0] = self.next_input
            self.position_tensor[0] = position
            embed = audio_embed + run(self.instance.token_embedding, self.token_tensor)
            last = require_finite(run(self.instance.text_decoder, embed, self.position_tensor)[0, -1], "text decoder")
        token = self.sampler(last)
        self.next_input = self.pad if token == self.eos else token
        return token


class Session:
    """One transcription session; feed audio in chunks of any size, flush, finish. Returns events as they occur."""

    def __init__(self, spec: ModelSpec, instance: ModelInstance, prompt_embeds: torch.Tensor,
                 sampler: Sampler | None = None, max_new_tokens: int | None = None, token_ids: bool = False):
        """`prompt_embeds`: the prompt's token embeddings (Engine computes them once for all sessions);
        `max_new_tokens`: the cap on sampled tokens (None: no cap); `token_ids`: pieces carry their token ids."""
        meta = spec.meta
        self.spec, self.instance = spec, instance
        self.rate = meta.sample_rate
        self.tok = meta.step_samples
        self.left_pad = meta.n_left_pad_tokens * self.tok
        self.right_pad_tokens = meta.n_right_pad_tokens
        self.delay = meta.delay_tokens
        self.eos = meta.eos_id
        self.loop = TokenLoop(instance, prompt_embeds, sampler or Sampler())
        self.detok = StreamingDetokenizer(spec.tokenizer)
        self.max_new_tokens = max_new_tokens
        self.want_ids = token_ids
        self.timeline = Timeline(self.left_pad, self.rate)
        self.client_samples = 0
        self.sampled = 0
        self.steps_computed = 0  # 80 ms steps the decoder ran (steps skipped after the token cap do not count)
        self.pending_ids: list[int] = []
        self.segment_text: list[str] = []
        self.segment_start_s = 0.0
        self.after_eos = False  # the last token sampled was EOS (a run of EOS ends one segment, not several)
        self.state = State.DECODING

    # -- events -------------------------------------------------------------------------------------------------

    @property
    def decoding(self) -> bool:
        return self.state is State.DECODING

    def _token_events(self, token: int, step: int, events: list, tail: Tail) -> None:
        """Turns a sampled token into events. EOS stops decoding at the end of audio, ends a segment in live audio,
        and is absorbed by a flush, whose own event ends the segment."""
        self.sampled += 1
        self.pending_ids.append(token)
        if token == self.eos:
            if tail is Tail.END:
                self.state = State.STOPPED
            elif tail is Tail.LIVE and not self.after_eos:
                events.append(self._segment_end(MODEL_EOS, self._audio_end_s()))
            self.after_eos = True
            return
        self.after_eos = False
        text = self.detok.push(token)
        if text or self.want_ids:
            self._piece(text, step, events)
        if self._limit_reached():
            self.state = State.STOPPED
            events.append(self._segment_end(MAX_NEW_TOKENS, self._audio_end_s()))

    def _limit_reached(self) -> bool:
        return self.max_new_tokens is not None and self.sampled >= self.max_new_tokens

    def _piece(self, text: str, step: int, events: list) -> None:
        belongs = (step - self.delay) * self.tok
        start = self.timeline.seconds(belongs)
        # at most one step long: a step whose end lies past skipped audio (endpointing) must not span the pause
        end = min(self.timeline.seconds(belongs + self.tok), start + self.tok / self.rate, self._audio_end_s())
        events.append(TextPiece(text, start, max(end, start), step - self.left_pad // self.tok,
                                self.pending_ids if self.want_ids else []))
        self.pending_ids = []
        self.segment_text.append(text)

    def _segment_end(self, reason: str, end_s: float) -> SegmentEnd:
        tail = self.detok.flush()
        if tail:
            self.segment_text.append(tail)
        end = SegmentEnd(reason, "".join(self.segment_text), self.segment_start_s, max(end_s, self.segment_start_s))
        self.segment_text, self.segment_start_s = [], end.end_s
        return end

    def _audio_end_s(self) -> float:
        return self.client_samples / self.rate

    @property
    def audio_processed_s(self) -> float:
        raise NotImplementedError

    def prepare(self) -> None:
        """Work that needs no client audio, done before the first audio arrives (see StreamingSession)."""

    def check_audio(self, samples: np.ndarray) -> np.ndarray:
        if self.state is State.FINISHED:
            raise SessionError("audio after the end of the session")
        try:
            return check_float_range(np.asarray(samples).reshape(-1), "audio")
        except AudioError as e:
            raise SessionError(str(e)) from None


class StreamingSession(Session):
    """Over a streaming program: one encoder step and one decoder step per 80 ms of audio, as audio arrives."""

    def __init__(self, spec: ModelSpec, instance: ModelInstance, prompt_embeds: torch.Tensor,
                 sampler: Sampler | None = None, max_new_tokens: int | None = None, token_ids: bool = False,
                 start: StartState | None = None):
        """`start`: the state after the leading silence, computed once for every session (start_state.py); None:
        the session computes it."""
        super().__init__(spec, instance, prompt_embeds, sampler, max_new_tokens, token_ids)
        meta = spec.meta
        self.start = start
        self.window = meta.stream_window_samples
        self.left_context = meta.stream_left_context
        self.lookahead = meta.stream_lookahead
        # Padded-stream buffer: holds samples [buf_start, buf_start + buf_len); starts with the left context of step
        # 0 (zeros before the stream) and the 32 tokens of leading silence.
        self.buf = np.zeros(max(1 << 16, 4 * self.left_pad), dtype=np.float32)
        self.buf_start = -self.left_context
        self.buf_len = self.left_context + self.left_pad
        self.step_index = 0
        self.frames_per_step = meta.downsample_factor
        self.max_encoder_steps = meta.max_encoder_steps
        self.encoder_calls = 0  # encode_audio_chunk calls so far (fewer than steps when audio queued up)
        self.flushed_at = 0  # client samples at the last flush

    @property
    def audio_processed_s(self) -> float:
        return min(self.timeline.seconds(self.step_index * self.tok), self._audio_end_s())

    def prepare(self) -> None:
        """Runs what needs no client audio, so that a live session's first audio waits only for the rest: the
        encoder over the leading silence (31 of its 32 steps: the last one's look-ahead reaches into the audio; 16
        per encoder call) and the decoder over the prompt rows paired with them, or, with a start state, copies
        their result in. Call it before the first audio."""
        if self.client_samples == 0 and self.step_index == 0:
            self._run_steps([])
            self.loop.prefill_pending()

    def _restore_start(self) -> None:
        """The shared start state instead of computing the steps it covers (their decoder rows are in it too)."""
        self.start.restore(self.instance)
        self.step_index = self.loop.position = self.start.steps

    def _append(self, samples: np.ndarray) -> None:
        keep_from = self.step_index * self.tok - self.left_context  # oldest sample a future step needs
        drop = keep_from - self.buf_start
        if drop > 0:
            self.buf[: self.buf_len - drop] = self.buf[drop : self.buf_len]
            self.buf_start, self.buf_len = keep_from, self.buf_len - drop
        need = self.buf_len + len(samples)
        if need > len(self.buf):
            grown = np.zeros(max(need, 2 * len(self.buf)), dtype=np.float32)
            grown[: self.buf_len] = self.buf[: self.buf_len]
            self.buf = grown
        self.buf[self.buf_len : need] = samples
        self.buf_len = need

    def _ready_steps(self) -> int:
        """Steps whose window (with its look-ahead) the buffer holds and that have not run yet: step s needs the
        padded samples up to tok * (s + 1) + lookahead."""
        end = self.buf_start + self.buf_len
        return max((end - self.lookahead) // self.tok - self.step_index, 0)

    def _window(self, step: int) -> torch.Tensor:
        offset = step * self.tok - self.left_context - self.buf_start
        return torch.from_numpy(self.buf[offset : offset + self.window])

    def _run_steps(self, events: list, tail: Tail = Tail.LIVE) -> None:
        """Runs every ready step. Steps that are queued (audio arrived faster than the model runs, or the leading
        silence) are encoded up to `max_encoder_steps` per encoder call: the encoder is causal, so the embeddings
        are those of one step per call, and its weights are read once per call instead of once per step."""
        run, inst = self.instance.run, self.instance
        if self.step_index == 0 and self.start is not None:
            self._restore_start()
        while (ready := self._ready_steps()) > 0:
            if not self.decoding:  # max_new_tokens reached or EOS at the end: consume audio without computing
                self.step_index += ready
                return
            first, n = self.step_index, min(ready, self.max_encoder_steps)
            mels = [run(inst.stream_window, self._window(first + i)) for i in range(n)]
            base = first * self.frames_per_step
            audio = require_finite(run(inst.encode_chunk, mels[0] if n == 1 else torch.cat(mels, dim=2),
                                       torch.arange(base, base + n * self.frames_per_step)), "audio encoder")
            self.encoder_calls += 1
            for i in range(n):
                self.step_index += 1
                if not self.decoding:
                    continue
                self.steps_computed += 1
                token = self.loop.step(audio[:, i : i + 1])
                if token is not None:
                    self._token_events(token, first + i, events, tail)

    def feed(self, samples: np.ndarray) -> list:
        samples = self.check_audio(samples)
        events: list = []
        if len(samples):
            self.client_samples += len(samples)
            self._append(samples)
            self._run_steps(events)
        return events

    def skip(self, n: int) -> None:
        """`n` samples of client audio that the model does not run on (an endpointer's silence): the client's clock
        advances, the model's stream does not. Skipped audio right after a flush leaves nothing pending."""
        if self.state is State.FINISHED:
            raise SessionError("audio after the end of the session")
        nothing_pending = self.client_samples == self.flushed_at
        self.timeline.skip(self.buf_start + self.buf_len, self.client_samples, n)
        self.client_samples += n
        if nothing_pending:
            self.flushed_at = self.client_samples
        if not self.segment_text:
            self.segment_start_s = self._audio_end_s()

    def _pad_out(self, extra_tokens: int) -> int:
        """Appends silence to a whole token plus the right padding (+ extra tokens); returns samples inserted."""
        end = self.buf_start + self.buf_len
        align = (-(end - self.left_pad)) % self.tok if end > self.left_pad else 0
        n = align + (self.right_pad_tokens + extra_tokens) * self.tok
        self.timeline.insert_silence(end, self.client_samples, n)
        self._append(np.zeros(n, dtype=np.float32))
        return n

    def flush(self, reason: str = FLUSH, silence_heard: int = 0) -> list:
        """Emits what is pending as at the end of audio, then stays usable (the inserted silence stays too); the
        segment ends with `reason` (FLUSH, or ENDPOINT from an endpointer). `silence_heard`: tokens of silence the
        model has just heard (an endpoint's pause), by which the padding is shorter: the words end with the same
        silence as at a flush, in fewer steps. With no audio since the previous flush (or the start) nothing is
        pending: the empty segment ends without running the model, so that a flood of flushes costs nothing."""
        if self.state is State.FINISHED:
            raise SessionError("flush after the end of the session")
        if self.client_samples == self.flushed_at:
            return [self._segment_end(reason, self._audio_end_s())]
        self.flushed_at = self.client_samples
        events: list = []
        # one more token of silence: the look-ahead of the last padded step
        self._pad_out(extra_tokens=1 - min(silence_heard, self.right_pad_tokens))
        self._run_steps(events, Tail.FLUSH)
        self.after_eos = False
        if self.decoding:
            events.append(self._segment_end(reason, self._audio_end_s()))
        return events

    def finish(self, reason: str = END_OF_AUDIO, idle_tail: bool = True) -> list:
        """Decodes what remains and ends the last segment with `reason` (END_OF_AUDIO, or why the audio was cut).
        `idle_tail` False: with no audio since the last flush nothing is pending, and the segment ends without
        decoding the end's padding (the endpointer's choice; the reference decodes it)."""
        if self.state is State.FINISHED:
            return []
        if not idle_tail and self.client_samples == self.flushed_at:
            self.state = State.FINISHED
            return [] if self._limit_reached() else [self._segment_end(reason, self._audio_end_s())]
        events: list = []
        self._pad_out(extra_tokens=0)
        self._append(np.zeros(self.lookahead, dtype=np.float32))
        hit_limit = self._limit_reached()
        self._run_steps(events, Tail.END)
        self.state = State.FINISHED
        if not hit_limit and not self._limit_reached():
            events.append(self._segment_end(reason, self._audio_end_s()))
        return events


class OfflineSession(Session):
    """Over an offline program: audio is buffered; a flush or the end transcribes it in one encoder pass."""

    def __init__(self, spec: ModelSpec, instance: ModelInstance, prompt_embeds: torch.Tensor,
                 sampler: Sampler | None = None, max_new_tokens: int | None = None, token_ids: bool = False):
        super().__init__(spec, instance, prompt_embeds, sampler, max_new_tokens, token_ids)
        meta = spec.meta
        self.block = meta.encoder_block_tokens * self.tok
        self.max_tokens = min(meta.max_seq_len, meta.max_audio_tokens)
        self.chunks: list[np.ndarray] = []
        self.buffered = 0
        self.processed_s = 0.0

    @property
    def audio_processed_s(self) -> float:
        return self.processed_s

    @property
    def max_segment_samples(self) -> int:
        return self.spec.max_offline_segment_samples

    def feed(self, samples: np.ndarray) -> list:
        samples = self.check_audio(samples)
        room = self.max_segment_samples - self.buffered
        fits = samples[:room]  # what fits is kept, so that a finish after the error transcribes up to the limit
        self.chunks.append(fits)
        self.buffered += len(fits)
        self.client_samples += len(fits)
        if len(samples) > room:
            raise SessionLimit(f"more than {self.max_segment_samples / self.rate:.0f} s of audio in one segment: the "
                               f"offline program holds at most {self.max_tokens} tokens; flush more often or use a "
                               f"streaming export")
        return []

    def _transcribe(self, events: list) -> None:
        audio = np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=np.float32)
        self.chunks, self.buffered = [], 0
        segment_start = self.client_samples - len(audio)
        align = (-len(audio)) % self.tok
        n_tok = (self.left_pad + len(audio) + align) // self.tok + self.right_pad_tokens
        total = -(-n_tok * self.tok // self.block) * self.block  # silence up to whole encoder blocks
        padded = np.zeros(total, dtype=np.float32)
        padded[self.left_pad : self.left_pad + len(audio)] = audio
        run, inst = self.instance.run, self.instance
        mel = run(inst.preprocess, torch.from_numpy(padded))
        embeds = require_finite(run(inst.audio_encoder, mel), "audio encoder")
        self.timeline = Timeline(self.left_pad, self.rate)
        self.timeline.client_before[0] = segment_start
        self.timeline.insert_silence(self.left_pad + len(audio), self.client_samples, total - len(audio))
        self.loop.reset()
        for position in range(n_tok):
            self.steps_computed += 1
            token = self.loop.step(embeds[:, position : position + 1])
            if token is not None:
                self._token_events(token, position, events, Tail.END)
            if not self.decoding:
                break
        # An EOS ends only this segment: the next one decodes again unless the cap was reached.
        self.state = State.STOPPED if self._limit_reached() else State.DECODING
        self.after_eos = False
        self.processed_s = self._audio_end_s()

    def _end_segment(self, reason: str) -> list:
        """Transcribes the buffered audio and ends its segment with `reason` (unless the token cap ended it)."""
        events: list = []
        if self.decoding:
            self._transcribe(events)
            if self.decoding:
                events.append(self._segment_end(reason, self._audio_end_s()))
        return events

    def flush(self) -> list:
        if self.state is State.FINISHED:
            raise SessionError("flush after the end of the session")
        return self._end_segment(FLUSH)

    def finish(self, reason: str = END_OF_AUDIO) -> list:
        if self.state is State.FINISHED:
            return []
        events = self._end_segment(reason)
        self.state = State.FINISHED
        return events


class HeldAudioSession:
    """Offline transcription over a streaming program: audio is held until a flush or the end, then streamed through
    at once (queued steps are encoded many per call). The text is the streaming session's (the model is causal and a
    session's output does not depend on how its audio was chunked); it all arrives at the flush."""

    def __init__(self, inner: StreamingSession, max_seconds: float):
        self.inner = inner
        self.max_samples = int(max_seconds * inner.rate)
        self.held: list[np.ndarray] = []
        self.held_samples = 0

    def __getattr__(self, name: str):
        """What it does not hold itself (progress and counters: audio_processed_s, steps_computed, sampled,
        encoder_calls; prepare) is the streaming session's."""
        return getattr(self.inner, name)

    def feed(self, samples: np.ndarray) -> list:
        samples = self.inner.check_audio(samples)
        room = self.max_samples - self.held_samples
        self.held.append(samples[:room])  # what fits is kept: a finish after the error transcribes up to the limit
        self.held_samples += len(self.held[-1])
        if len(samples) > room:
            raise SessionLimit(f"more than {self.max_samples / self.inner.rate:g} s of audio in one offline segment; "
                               f"flush more often or use streaming mode")
        return []

    def _release_held(self) -> list:
        audio = np.concatenate(self.held) if self.held else np.zeros(0, np.float32)
        self.held, self.held_samples = [], 0
        return self.inner.feed(audio)

    def flush(self) -> list:
        return self._release_held() + self.inner.flush()

    def finish(self, reason: str = END_OF_AUDIO) -> list:
        return self._release_held() + self.inner.finish(reason)
