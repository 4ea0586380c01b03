"""The realtime websocket endpoint: vLLM's `/v1/realtime` transcription protocol, beside gRPC (`serve
--websocket-port`), over the same engine, session slots, limits, access token and TLS.

The protocol (docs/runtime.md, "Realtime websocket", lists the differences from vLLM): the server greets with
`session.created`; the client may send `session.update` (whose `turn_detection` turns on endpointing for the next
transcription: `input_audio_buffer.speech_stopped` at each pause); it sends `input_audio_buffer.append` events (base64
PCM16 mono at 16 kHz) and `input_audio_buffer.commit`. The first commit starts a transcription (a session on a program
instance of its own), which takes the audio appended before and after it and answers `transcription.delta` events as
text is decoded; `input_audio_buffer.commit` with `"final": true` ends the audio, and the server answers
`transcription.done` (the whole text and the token usage) and frees the instance. The client may then start another.
Bad events get an `error` event (`error`, `code`) and change nothing else; errors that end the connection (idle,
session limits, shutdown, a model fault) come after the `transcription.done` of the audio received before them.

Each connection runs in a thread of its own, which reads events and runs the model in turn: while the model runs,
websockets stops reading once `MAX_QUEUED_MESSAGES` messages wait, and TCP flow control then slows the client, so a
connection holds at most that many messages (of at most --max-message-bytes each) beyond what the model has taken.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import math
import ssl
import tempfile
import threading
import time
import uuid
from collections import deque
from pathlib import Path

import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection, serve

from .audio import AudioError, decode_pcm16le
from .endpointing import EndpointingOptions
from .engine import Engine
from .limits import ServerOptions
from .metrics import Metrics
from .pool import InstanceLoadError, InstancePool, PoolFull
from .session import (END_OF_AUDIO, ENDPOINT, MAX_NEW_TOKENS, SERVER_SHUTDOWN, SESSION_LIMIT, ModelFault, SegmentEnd,
                      TextPiece)

log = logging.getLogger("voxtral_runtime.websocket")

PATH = "/v1/realtime"
POLL_S = 0.25  # how often a waiting connection checks for shutdown and idleness
MAX_QUEUED_MESSAGES = 8
# A transcription that fell behind takes the append events already waiting, up to this much audio, in one feed (the
# session then encodes the queued steps up to 16 per encoder call), as the gRPC path does.
CATCH_UP_AUDIO_S = 1.28
SAMPLE_RATE = 16000  # the protocol's PCM16 rate, which is the model's
# Error codes: vLLM's own, then this server's (docs/runtime.md).
INVALID_JSON, UNKNOWN_EVENT, INVALID_AUDIO = "invalid_json", "unknown_event", "invalid_audio"
SERVER_BUSY, BUFFER_FULL, IDLE_TIMEOUT = "server_busy", "input_audio_buffer_full", "idle_timeout"
LIMIT, SHUTDOWN, MODEL_FAULT, UNAVAILABLE = "session_limit", "server_shutdown", "model_fault", "unavailable"
CLOSE_CODES = {SHUTDOWN: 1001, LIMIT: 1008, MODEL_FAULT: 1011}  # RFC 6455: going away, policy, internal error


class EventError(Exception):
    """A bad event or one the server cannot take now: answered with an `error` event; the connection goes on."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class Closing(Exception):
    """Ends the connection after an `error` event; a transcription in flight first finishes with `reason` and its
    transcription.done (None: the model faulted, the transcription is dropped)."""

    def __init__(self, code: str, message: str, reason: str | None = END_OF_AUDIO):
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason


def turn_detection(value) -> EndpointingOptions | None:
    """session.update's turn_detection (OpenAI's shape): null for none, or {"type": "server_vad", "threshold",
    "prefix_padding_ms", "silence_duration_ms"}, the numbers optional."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") != "server_vad":
        raise EventError(INVALID_JSON, 'turn_detection must be null or {"type": "server_vad", ...}')
    names = {"threshold": "threshold", "silence_duration_ms": "silence_ms", "prefix_padding_ms": "prefix_ms"}
    settings = {}
    for name, field in names.items():
        if name in value:
            number = value[name]
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) or (
                    name != "threshold" and number != int(number)):
                raise EventError(INVALID_JSON, f"turn_detection's {name!r} must be a number"
                                               f"{'' if name == 'threshold' else ' of milliseconds'}")
            settings[field] = number if name == "threshold" else int(number)
    try:
        return EndpointingOptions(**settings)
    except ValueError as e:
        raise EventError(INVALID_JSON, str(e)) from None


class Transcription:
    """One commit-to-done transcription: a session on its own program instance, and what it has said so far."""

    def __init__(self, server: RealtimeWebsocket, instance, session_id: str,
                 endpointing: EndpointingOptions | None = None):
        self.instance = instance
        self.session = server.engine.session(instance, max_new_tokens=server.options.token_cap(server.meta),
                                             endpointing=endpointing)
        self.meter = server.metrics.session("websocket", session_id, self.session)
        self.text: list[str] = []
        self.samples = 0  # client samples taken
        self.capped = False  # the token cap ended the text: later audio is taken and ignored

    def run(self, call, *args) -> list[dict]:
        """A model call -> the events to send: a delta per new text, and with endpointing the end of each turn."""
        events = []
        for event in self.meter.run(call, *args):
            if isinstance(event, TextPiece) and event.text:
                self.text.append(event.text)
                events.append({"type": "transcription.delta", "delta": event.text})
            elif isinstance(event, SegmentEnd) and event.reason == MAX_NEW_TOKENS:
                self.capped = True
            elif isinstance(event, SegmentEnd) and event.reason == ENDPOINT:
                events.append({"type": "input_audio_buffer.speech_stopped", "text": event.text,
                               "audio_start_ms": round(event.start_s * 1000),
                               "audio_end_ms": round(event.end_s * 1000)})
        return events

    def done(self, prompt_tokens: int) -> dict:
        completion = self.session.sampled
        return {"type": "transcription.done", "text": "".join(self.text),
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                          "total_tokens": prompt_tokens + completion}}


class RealtimeWebsocket:
    """The websocket server; `serve_forever` runs in a thread of its own, `shutdown` stops it."""

    def __init__(self, engine: Engine, pool: InstancePool, options: ServerOptions, shutdown: threading.Event,
                 metrics: Metrics, host: str, port: int, tls: tuple[bytes, bytes] | None = None):
        self.engine, self.pool, self.options, self.shutdown_event, self.metrics = (engine, pool, options, shutdown,
                                                                                   metrics)
        self.meta = engine.spec.meta
        if self.meta.sample_rate != SAMPLE_RATE:
            raise ValueError(f"the websocket protocol carries {SAMPLE_RATE} Hz audio; this model takes "
                             f"{self.meta.sample_rate} Hz")
        self.server = serve(self._handle, host, port, ssl=_ssl_context(tls) if tls else None,
                            process_request=self._admit, max_size=options.max_message_bytes,
                            max_queue=MAX_QUEUED_MESSAGES, compression=None, logger=log)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="websocket")
        self.thread.start()

    def close(self, grace: float) -> None:
        """At shutdown (the shutdown event is set: connections finish their transcription, then close, and new ones
        are refused): waits up to `grace` seconds for the connections, then closes those left (1001)."""
        deadline = time.monotonic() + grace
        with self.server.lock:
            threads = list(self.server.handler_threads)
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0))
        self.server.shutdown()

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        """The opening handshake: the path, then the access token (`Authorization: Bearer`)."""
        if request.path.split("?", 1)[0] != PATH:
            return connection.respond(404, f"not found: the realtime endpoint is {PATH}\n")
        if self.options.token is not None:
            got = request.headers.get("Authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {self.options.token}".encode()):
                return connection.respond(401, "missing or wrong access token (header 'Authorization: Bearer "
                                               "<token>')\n")
        if self.shutdown_event.is_set():
            return connection.respond(503, "the server is shutting down\n")
        return None

    def _handle(self, connection: ServerConnection) -> None:
        Connection(self, connection).run()


class Connection:
    """One websocket client: its events in order, at most one transcription at a time."""

    def __init__(self, server: RealtimeWebsocket, websocket: ServerConnection):
        self.server, self.ws, self.options = server, websocket, server.options
        self.id = f"sess-{uuid.uuid4().hex[:12]}"
        self.backlog: deque[str | bytes] = deque()  # messages read ahead while gathering queued audio
        self.held: list[np.ndarray] = []  # audio appended before a commit
        self.held_samples = 0
        self.max_held = int(self.options.max_buffered_audio_s * SAMPLE_RATE)
        self.max_samples = int(self.options.max_session_audio_s * SAMPLE_RATE)
        self.catch_up = int(CATCH_UP_AUDIO_S * SAMPLE_RATE)
        self.transcription: Transcription | None = None
        self.endpointing: EndpointingOptions | None = None  # session.update's turn_detection, for the next commit
        self.started = self.last_activity = time.monotonic()

    def send(self, event: dict) -> None:
        self.ws.send(json.dumps(event))

    def error(self, code: str, message: str) -> None:
        self.send({"type": "error", "error": message, "code": code})

    def run(self) -> None:
        log.info("websocket %s connected", self.id)
        code = "OK"
        try:
            self.send({"type": "session.created", "id": self.id, "created": int(time.time())})
            while True:
                message = self._next()
                try:
                    self._event(message)
                except EventError as e:
                    self.error(e.code, e.message)
        except Closing as e:
            code = e.code
            try:
                self._end_transcription(e.reason, code)
                self.error(e.code, e.message)
                self.ws.close(CLOSE_CODES.get(e.code, 1000), e.code)
            except (ConnectionClosed, Closing):
                pass
        except ConnectionClosed:
            code = "CANCELLED"
        finally:
            self._release(code)
            log.info("websocket %s closed (%s)", self.id, code)

    # -- reading ------------------------------------------------------------------------------------------------

    def _next(self) -> str | bytes:
        """The next message; raises Closing at shutdown, the duration limit or when idle."""
        if self.backlog:
            return self.backlog.popleft()
        while True:
            if self.server.shutdown_event.is_set():
                raise Closing(SHUTDOWN, "the server is shutting down; the audio received before was transcribed",
                              SERVER_SHUTDOWN)
            now = time.monotonic()
            if now - self.started > self.options.max_session_duration_s:
                raise Closing(LIMIT, f"the connection lasted its {self.options.max_session_duration_s:g} s limit "
                                     "(--max-session-duration)", SESSION_LIMIT)
            if now - self.last_activity > self.options.idle_timeout_s:
                raise Closing(IDLE_TIMEOUT, f"no event for {self.options.idle_timeout_s:g} s; connection closed",
                              END_OF_AUDIO)
            try:
                message = self.ws.recv(timeout=POLL_S)
            except TimeoutError:
                continue
            self.last_activity = time.monotonic()
            return message

    @staticmethod
    def _parse(message: str | bytes) -> dict:
        if isinstance(message, bytes):
            raise EventError(INVALID_JSON, "binary frames are not part of the protocol; send JSON text events")
        try:
            event = json.loads(message)
        except json.JSONDecodeError as e:
            raise EventError(INVALID_JSON, f"invalid JSON: {e}") from None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise EventError(INVALID_JSON, "an event must be a JSON object with a string 'type'")
        return event

    @staticmethod
    def _audio(event: dict) -> np.ndarray:
        data = event.get("audio")
        if not isinstance(data, str):
            raise EventError(INVALID_AUDIO, "input_audio_buffer.append needs 'audio': base64 PCM16 at 16 kHz")
        try:
            samples = decode_pcm16le(base64.b64decode(data, validate=True))
        except (binascii.Error, ValueError) as e:
            raise EventError(INVALID_AUDIO, f"'audio' is not valid base64: {e}") from None
        except AudioError as e:
            raise EventError(INVALID_AUDIO, str(e)) from None
        if not len(samples):
            raise EventError(INVALID_AUDIO, "empty audio")
        return samples

    def _waiting_audio(self, first: np.ndarray) -> np.ndarray:
        """`first` and the append events already waiting behind it, up to CATCH_UP_AUDIO_S (a transcription that
        fell behind then encodes its queued steps many per encoder call). Any other event stays first in line."""
        chunks, size = [first], len(first)
        while size < self.catch_up and not self.backlog:
            try:
                message = self.ws.recv(timeout=0)
            except TimeoutError:
                break
            try:
                event = self._parse(message)
                chunk = self._audio(event) if event["type"] == "input_audio_buffer.append" else None
            except EventError:
                chunk = None
            if chunk is None:
                self.backlog.append(message)  # another event, or a bad one: handled (or refused) in its turn
                break
            chunks.append(chunk)
            size += len(chunk)
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    # -- events -------------------------------------------------------------------------------------------------

    def _event(self, message: str | bytes) -> None:
        event = self._parse(message)
        kind = event["type"]
        if kind == "session.update":
            model = event.get("model")
            if model is not None and not isinstance(model, str):
                raise EventError(INVALID_JSON, "session.update's 'model' must be a string")
            session = event.get("session", {})
            if not isinstance(session, dict):
                raise EventError(INVALID_JSON, "session.update's 'session' must be an object")
            endpointing = self.endpointing
            for fields in (session, event):  # OpenAI nests the settings in "session", vLLM's events are flat
                if "turn_detection" in fields:
                    endpointing = turn_detection(fields["turn_detection"])
            self.endpointing = endpointing  # only once every value is valid: a bad update changes nothing
        elif kind == "input_audio_buffer.append":
            samples = self._audio(event)
            # Waiting appends are taken together only while transcribing: before a commit each is held (or refused
            # when the buffer is full) on its own.
            self._append(self._waiting_audio(samples) if self.transcription else samples)
        elif kind == "input_audio_buffer.commit":
            final = event.get("final", False)
            if not isinstance(final, bool):
                raise EventError(INVALID_JSON, "input_audio_buffer.commit's 'final' must be true or false")
            if self.transcription is None:
                self._start()
            if final:
                self._end_transcription(END_OF_AUDIO, "OK")
        else:
            raise EventError(UNKNOWN_EVENT, f"unknown event type {kind!r}; this endpoint takes session.update, "
                                            "input_audio_buffer.append and input_audio_buffer.commit")

    def _append(self, samples: np.ndarray) -> None:
        t = self.transcription
        if t is None:
            if self.held_samples + len(samples) > self.max_held:
                raise EventError(BUFFER_FULL, f"more than {self.options.max_buffered_audio_s:g} s of audio appended "
                                              "before a commit; this audio was dropped: commit to start transcribing")
            self.held.append(samples)
            self.held_samples += len(samples)
            return
        room = self.max_samples - t.samples
        self._feed(samples[:room])
        if len(samples) > room:
            raise Closing(LIMIT, f"the session reached its {self.options.max_session_audio_s:g} s audio limit "
                                 "(--max-session-audio)", SESSION_LIMIT)

    def _feed(self, samples: np.ndarray) -> None:
        t = self.transcription
        t.samples += len(samples)
        t.meter.set_received(t.samples / SAMPLE_RATE)
        if t.capped or not len(samples):
            return
        for delta in self._model(t.session.feed, samples):
            self.send(delta)

    def _model(self, call, *args) -> list[dict]:
        try:
            return self.transcription.run(call, *args)
        except ModelFault as e:
            log.error("websocket %s: %s; its program instance is discarded", self.id, e)
            self.server.pool.discard(self.transcription.instance)
            self.transcription.meter.end(MODEL_FAULT)
            self.transcription = None
            raise Closing(MODEL_FAULT, f"{e} for this session's audio; the transcription was ended and its "
                                       "program instance discarded", None) from None

    def _start(self) -> None:
        """The first commit: a session slot and instance, then the audio held so far."""
        try:
            instance = self.server.pool.acquire()
        except PoolFull as e:
            raise EventError(SERVER_BUSY, f"{e}; the audio appended so far is kept") from None
        except InstanceLoadError as e:
            raise EventError(UNAVAILABLE, f"{e}; retry later") from None
        try:
            self.transcription = Transcription(self.server, instance, self.id, self.endpointing)
        except Exception:
            self.server.pool.release(instance)
            raise
        self._model(self.transcription.session.prepare)  # the leading silence
        held, self.held, self.held_samples = self.held, [], 0
        if held:
            self._append(np.concatenate(held))

    def _end_transcription(self, reason: str | None, code: str) -> None:
        """Finishes the transcription in flight (if any) with `reason`, sends transcription.done, frees the slot."""
        t = self.transcription
        if t is None or reason is None:
            return
        for delta in self._model(t.session.finish, reason):
            self.send(delta)
        self.send(t.done(len(self.server.meta.prompt_ids)))
        self._release(code)

    def _release(self, code: str) -> None:
        t, self.transcription = self.transcription, None
        if t is not None:
            t.meter.end(code)
            self.server.pool.release(t.instance)


def _ssl_context(tls: tuple[bytes, bytes]) -> ssl.SSLContext:
    """A server TLS context from PEM bytes (key, certificate chain), as gRPC takes them."""
    key, chain = tls
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:  # the ssl module loads keys from files only
        cert_file, key_file = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_file.write_bytes(chain)
        key_file.touch(mode=0o600)
        key_file.write_bytes(key)
        context.load_cert_chain(cert_file, key_file)
    return context
