"""The Realtime service: one Transcribe call is one session on a program instance of its own.

A call goes: check the token, read the SessionConfig, take a session slot (pool.py), then loop: take the next
request from the call's inbox (inbox.py: read ahead by a thread, bounded, so a fast client is slowed by gRPC flow
control), feed audio to the session (several waiting messages at once when the model is behind), answer each
event. The loop ends at the client's half-close (END_OF_AUDIO), a session limit (SESSION_LIMIT, then
RESOURCE_EXHAUSTED), a shutdown (SERVER_SHUTDOWN, then UNAVAILABLE) or an error status. One session's failure only
ends its own call, and an instance whose outputs turned non-finite is discarded instead of serving the next session.
"""

from __future__ import annotations

import hmac
import logging
import math
import threading
import time
import uuid

import grpc
import numpy as np
from voxtral_client.wav import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from voxtral_client.proto import realtime_pb2 as pb
from voxtral_client.proto import realtime_pb2_grpc as pb_grpc

from . import __version__
from .audio import AudioError, StreamResampler, decode_f32le, decode_pcm16le
from .endpointing import EndpointingOptions
from .engine import Engine
from .inbox import END, GONE, Inbox
from .limits import ServerOptions
from .metrics import Metrics
from .pool import InstanceLoadError, InstancePool, PoolFull
from .session import (END_OF_AUDIO, ENDPOINT, FLUSH, MAX_NEW_TOKENS, MODEL_EOS, SERVER_SHUTDOWN, SESSION_LIMIT,
                      ModelFault, SegmentEnd, SessionError, SessionLimit, TextPiece)

log = logging.getLogger("voxtral_runtime.server")

POLL_S = 0.25  # how often a waiting session checks for shutdown, idleness and a vanished client
# A session that fell behind takes the audio messages already waiting in its inbox, up to this much audio, in one
# feed: the session then encodes the queued steps up to 16 per encoder call (1.28 s), reading the encoder's weights
# once per call.
CATCH_UP_AUDIO_S = 1.28
BYTES_PER_SAMPLE = {pb.AUDIO_ENCODING_PCM16LE: 2, pb.AUDIO_ENCODING_F32LE: 4}
DECODERS = {pb.AUDIO_ENCODING_PCM16LE: decode_pcm16le, pb.AUDIO_ENCODING_F32LE: decode_f32le}
REASONS = {FLUSH: pb.FINAL_REASON_FLUSH, END_OF_AUDIO: pb.FINAL_REASON_END_OF_AUDIO,
           MODEL_EOS: pb.FINAL_REASON_MODEL_EOS, MAX_NEW_TOKENS: pb.FINAL_REASON_MAX_NEW_TOKENS,
           SERVER_SHUTDOWN: pb.FINAL_REASON_SERVER_SHUTDOWN, SESSION_LIMIT: pb.FINAL_REASON_SESSION_LIMIT,
           ENDPOINT: pb.FINAL_REASON_ENDPOINT}


def endpointing_options(config: pb.SessionConfig) -> EndpointingOptions | None:
    """The session's endpointing (None: off); raises ValueError for a value out of range."""
    if not config.HasField("endpointing"):
        return None
    e, defaults = config.endpointing, EndpointingOptions()
    return EndpointingOptions(
        threshold=e.threshold if e.HasField("threshold") else defaults.threshold,
        silence_ms=e.silence_duration_ms if e.HasField("silence_duration_ms") else defaults.silence_ms,
        prefix_ms=e.prefix_padding_ms if e.HasField("prefix_padding_ms") else defaults.prefix_ms)


class Abort(Exception):
    """Ends the call with this status (after any responses already sent)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class Cut(Exception):
    """The audio is cut (shutdown or a session limit): the session finishes with `reason`, then the call ends with
    the status."""

    def __init__(self, reason: str, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.reason, self.code, self.message = reason, code, message


class RealtimeServicer(pb_grpc.RealtimeServicer):
    """Registered before the server starts (gRPC allows no later registration); answers UNAVAILABLE until
    `ready(engine, pool)` hands it the loaded, warmed-up model."""

    def __init__(self, options: ServerOptions, shutdown: threading.Event):
        self.options, self.shutdown = options, shutdown
        self.engine: Engine | None = None
        self._inboxes: set[Inbox] = set()
        self._inboxes_lock = threading.Lock()

    def ready(self, engine: Engine, pool: InstancePool, metrics: Metrics) -> None:
        self.pool, self.rate, self.metrics = pool, engine.spec.meta.sample_rate, metrics
        self.engine = engine

    def stop_reading(self) -> None:
        """Shutdown: every session stops taking messages; what each already received is still transcribed."""
        with self._inboxes_lock:
            for inbox in self._inboxes:
                inbox.close()

    # -- checks -------------------------------------------------------------------------------------------------

    def _check_ready(self, context) -> None:
        if self.engine is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the model is still loading; retry shortly")

    def _check_token(self, context) -> None:
        if self.options.token is None:
            return
        got = dict(context.invocation_metadata()).get("authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {self.options.token}".encode()):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong access token (metadata "
                                                           "'authorization: Bearer <token>')")

    def _config(self, request) -> pb.SessionConfig:
        if request is END:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "empty stream: the first message must be a SessionConfig")
        if request.WhichOneof("request") != "config":
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a SessionConfig, got "
                                                          f"{request.WhichOneof('request') or 'an empty request'}")
        config = request.config
        if config.encoding not in DECODERS:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown audio encoding {config.encoding}; use "
                                                          "AUDIO_ENCODING_PCM16LE or AUDIO_ENCODING_F32LE")
        if not MIN_SAMPLE_RATE <= config.sample_rate_hz <= MAX_SAMPLE_RATE:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"sample_rate_hz {config.sample_rate_hz} is outside "
                                                          f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}")
        if not (math.isfinite(config.temperature) and config.temperature >= 0):
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"temperature must be a finite number >= 0, got "
                                                          f"{config.temperature}")
        if config.mode not in pb.TranscriptionMode.values():
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown mode {config.mode}; use "
                                                          "TRANSCRIPTION_MODE_STREAMING or TRANSCRIPTION_MODE_OFFLINE")
        if config.mode != pb.TRANSCRIPTION_MODE_OFFLINE and not self.engine.streaming:
            raise Abort(grpc.StatusCode.FAILED_PRECONDITION, "this server holds an offline program; ask for "
                                                             "TRANSCRIPTION_MODE_OFFLINE or serve a streaming export")
        if config.HasField("endpointing") and config.mode == pb.TRANSCRIPTION_MODE_OFFLINE:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "endpointing is for streaming sessions; offline mode "
                                                          "transcribes at each flush")
        try:
            endpointing_options(config)
        except ValueError as e:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        return config

    def _first(self, inbox: Inbox, context):
        """The first request (the config), within the idle timeout."""
        deadline = time.monotonic() + self.options.idle_timeout_s
        while (item := inbox.get(POLL_S)) is None:
            if self.shutdown.is_set():
                raise Abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            if time.monotonic() > deadline:
                raise Abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"no SessionConfig within "
                                                               f"{self.options.idle_timeout_s:g} s")
            if not context.is_active():
                raise Abort(grpc.StatusCode.CANCELLED, "client went away")
        if item is GONE:
            raise Abort(grpc.StatusCode.CANCELLED, "client went away")
        return item

    # -- RPCs ---------------------------------------------------------------------------------------------------

    def Transcribe(self, request_iterator, context):
        self._check_token(context)
        self._check_ready(context)
        inbox = Inbox(request_iterator, capacity=self.options.max_message_bytes)
        with self._inboxes_lock:
            self._inboxes.add(inbox)
        if self.shutdown.is_set():
            inbox.close()
        session_id = uuid.uuid4().hex[:12]
        instance, faulted, call, code = None, False, None, "OK"
        try:
            config = self._config(self._first(inbox, context))
            try:
                instance = self.pool.acquire()
            except PoolFull as e:
                raise Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)) from None
            except InstanceLoadError as e:
                raise Abort(grpc.StatusCode.UNAVAILABLE, f"{e}; retry later") from None
            call = SessionCall(self, config, instance, inbox, context, session_id)
            log.info("session %s started (%d Hz, %s, %s)", session_id, config.sample_rate_hz,
                     pb.AudioEncoding.Name(config.encoding), pb.TranscriptionMode.Name(config.mode))
            yield pb.TranscribeResponse(started=pb.SessionStarted(session_id=session_id))
            yield from call.run()
        except Abort as e:
            log.info("session %s: %s %s", session_id, e.code.name, e.message)
            code = e.code.name
            context.abort(e.code, e.message)
        except SessionLimit as e:
            code = grpc.StatusCode.RESOURCE_EXHAUSTED.name
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        except SessionError as e:
            code = grpc.StatusCode.INVALID_ARGUMENT.name
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except ModelFault as e:
            faulted, code = True, grpc.StatusCode.INTERNAL.name
            log.error("session %s: %s; its program instance is discarded", session_id, e)
            context.abort(grpc.StatusCode.INTERNAL, f"{e} for this session's audio; the session was ended and its "
                                                    "program instance discarded")
        except GeneratorExit:  # the call was cancelled while a response waited to be sent
            code = grpc.StatusCode.CANCELLED.name
            raise
        finally:
            if call is not None:
                call.meter.end(code)
            inbox.close()
            with self._inboxes_lock:
                self._inboxes.discard(inbox)
            if instance is not None:
                (self.pool.discard if faulted else self.pool.release)(instance)
            log.info("session %s ended", session_id)

    def Describe(self, request, context):
        self._check_token(context)
        self._check_ready(context)
        spec = self.engine.spec.describe()
        opts = self.options
        offline_s = opts.max_offline_audio_s
        if not spec["streaming"]:
            offline_s = min(offline_s, self.engine.spec.max_offline_segment_s)
        return pb.ModelDescription(
            model=self.engine.spec.model_name, server_version=f"voxtral-runtime {__version__}",
            backend=spec["backend"], quantization=spec["quantization"], dtype=spec["dtype"],
            program=pb.PROGRAM_KIND_STREAMING if spec["streaming"] else pb.PROGRAM_KIND_OFFLINE,
            delay_ms=spec["delay_ms"], step_ms=spec["step_ms"], model_sample_rate_hz=spec["sample_rate"],
            min_sample_rate_hz=MIN_SAMPLE_RATE, max_sample_rate_hz=MAX_SAMPLE_RATE,
            encodings=list(DECODERS), vocab_size=spec["vocab_size"],
            encoder_window_frames=spec["encoder_window_frames"],
            decoder_window_tokens=spec["decoder_window_tokens"] if spec["streaming"] else 0,
            max_seq_len=0 if spec["streaming"] else spec["max_seq_len"],
            limits=pb.ServerLimits(
                max_sessions=opts.max_sessions, active_sessions=self.pool.active,
                max_message_bytes=opts.max_message_bytes, idle_timeout_s=opts.idle_timeout_s,
                max_session_audio_s=opts.max_session_audio_s, max_offline_audio_s=offline_s,
                max_new_tokens=opts.token_cap(self.engine.spec.meta), auth_required=opts.token is not None,
                max_session_duration_s=opts.max_session_duration_s, max_flushes=opts.max_flushes,
                max_buffered_audio_s=opts.max_buffered_audio_s))


class SessionCall:
    """One Transcribe call after admission: its session, resampler, limits and counters."""

    def __init__(self, servicer: RealtimeServicer, config: pb.SessionConfig, instance, inbox: Inbox, context,
                 session_id: str):
        self.servicer, self.options, self.inbox, self.context = servicer, servicer.options, inbox, context
        engine = servicer.engine
        cap = self.options.token_cap(engine.spec.meta)
        self.session = engine.session(
            instance, offline=config.mode == pb.TRANSCRIPTION_MODE_OFFLINE, temperature=config.temperature,
            seed=config.seed if config.HasField("seed") else None,
            max_new_tokens=min(config.max_new_tokens or cap, cap), token_ids=config.token_ids,
            max_offline_audio_s=self.options.max_offline_audio_s, endpointing=endpointing_options(config))
        self.rate = config.sample_rate_hz
        self.resampler = StreamResampler(self.rate, servicer.rate)
        self.decode = DECODERS[config.encoding]
        self.sample_bytes = BYTES_PER_SAMPLE[config.encoding]
        self.catch_up_bytes = int(CATCH_UP_AUDIO_S * self.rate) * self.sample_bytes
        inbox.set_capacity(max(int(self.options.max_buffered_audio_s * self.rate) * self.sample_bytes, 1))
        self.max_samples = int(self.options.max_session_audio_s * self.rate)
        self.samples = 0  # client samples accepted
        self.flushes = 0
        self.started = self.last_activity = time.monotonic()
        self.meter = servicer.metrics.session("grpc", session_id, self.session)

    def _model(self, call, *args) -> list:
        """Runs one of the session's model calls (prepare, feed, flush, finish), timed for the metrics."""
        return self.meter.run(call, *args)

    def _respond(self, events: list):
        received = self.inbox.received_bytes / self.sample_bytes / self.rate
        self.meter.set_received(received)
        for event in events:
            if isinstance(event, TextPiece):
                yield pb.TranscribeResponse(
                    delta=pb.TextDelta(text=event.text, start_s=event.start_s, end_s=event.end_s,
                                       step=max(event.step, 0), token_ids=event.token_ids),
                    audio_processed_s=self.session.audio_processed_s, audio_received_s=received)
            else:
                yield pb.TranscribeResponse(
                    final=pb.Final(reason=REASONS[event.reason], text=event.text, start_s=event.start_s,
                                   end_s=event.end_s),
                    audio_processed_s=self.session.audio_processed_s, audio_received_s=received)

    def _next(self):
        """The next request or END; raises Cut at shutdown or the duration limit, Abort when idle or gone."""
        while True:
            if self.servicer.shutdown.is_set() and self.inbox.empty():
                raise Cut(SERVER_SHUTDOWN, grpc.StatusCode.UNAVAILABLE, "the server is shutting down; the audio "
                                                                        "received before was transcribed")
            now = time.monotonic()
            if now - self.started > self.options.max_session_duration_s:
                raise Cut(SESSION_LIMIT, grpc.StatusCode.RESOURCE_EXHAUSTED, f"the session lasted its "
                          f"{self.options.max_session_duration_s:g} s limit (--max-session-duration)")
            if now - self.last_activity > self.options.idle_timeout_s:
                raise Abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"no audio or control for "
                                                               f"{self.options.idle_timeout_s:g} s; session closed")
            item = self.inbox.get(POLL_S)
            if item is None:
                if not self.context.is_active():
                    raise Abort(grpc.StatusCode.CANCELLED, "client went away")
                continue
            if item is GONE:
                raise Abort(grpc.StatusCode.CANCELLED, "client went away")
            if item is END or item.WhichOneof("request") != "audio" or item.audio:
                self.last_activity = now  # an empty audio message is ignored and keeps nobody's slot alive
            return item

    def _audio(self, first: bytes) -> list:
        """Decodes `first` and the audio messages waiting behind it, feeds what fits the session's audio limit.
        A bad message or the limit ends the call after the audio before it is transcribed."""
        samples, problem = [], None
        for payload in [first, *self.inbox.take_waiting_audio(self.catch_up_bytes)]:
            try:
                chunk = self.decode(payload)
            except AudioError as e:
                problem = Abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
                break
            room = self.max_samples - self.samples
            if len(chunk) > room:
                samples.append(chunk[:room])
                self.samples += room
                problem = Cut(SESSION_LIMIT, grpc.StatusCode.RESOURCE_EXHAUSTED, f"the session reached its "
                              f"{self.options.max_session_audio_s:g} s audio limit (--max-session-audio)")
                break
            samples.append(chunk)
            self.samples += len(chunk)
        joined = samples[0] if len(samples) == 1 else np.concatenate(samples) if samples else None
        try:
            events = (self._model(self.session.feed, self.resampler.process(joined))
                      if joined is not None and len(joined) else [])
        except SessionLimit as e:  # an offline segment too long: the audio held so far is still transcribed
            raise Cut(SESSION_LIMIT, grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)) from None
        if problem is not None:
            self.pending = events
            raise problem
        return events

    def run(self):
        self.pending: list = []
        self._model(self.session.prepare)  # the leading silence, while the client's first audio is on its way
        try:
            while True:
                request = self._next()
                if request is END:
                    yield from self._respond(self._model(self.session.feed, self.resampler.flush())
                                             + self._model(self.session.finish))
                    return
                kind = request.WhichOneof("request")
                if kind == "audio":
                    events = self._audio(request.audio) if request.audio else []
                elif kind == "control" and request.control == pb.CONTROL_FLUSH:
                    self.flushes += 1
                    if self.flushes > self.options.max_flushes:
                        raise Cut(SESSION_LIMIT, grpc.StatusCode.RESOURCE_EXHAUSTED, f"more than "
                                  f"{self.options.max_flushes} flushes in one session (--max-flushes)")
                    events = self._model(self.session.feed, self.resampler.flush()) + self._model(self.session.flush)
                elif kind == "config":
                    raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "a second SessionConfig; send it only first")
                elif kind == "control":
                    raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown control {request.control}")
                else:
                    raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown request {kind or '(empty)'}")
                yield from self._respond(events)
                if any(isinstance(e, SegmentEnd) and e.reason == MAX_NEW_TOKENS for e in events):
                    return
        except Cut as cut:
            events = (self.pending + self._model(self.session.feed, self.resampler.flush())
                      + self._model(self.session.finish, cut.reason))
            yield from self._respond(events)
            raise Abort(cut.code, cut.message) from None
        except Abort:
            yield from self._respond(self.pending)
            raise
