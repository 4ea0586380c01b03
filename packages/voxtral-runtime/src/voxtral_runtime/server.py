"""`voxtral-runtime serve`: the model behind a gRPC bidirectional stream (proto/voxtral/realtime/v1).

Each Transcribe call is one session on its own program instance (programs hold their KV caches); idle instances are
kept for the next call, so at most --max-sessions instances ever exist. A reader thread turns the request stream into
a queue, so the session loop can enforce the idle timeout and react to shutdown; one failing session only ends its
own call. SIGTERM stops accepting calls, lets sessions in flight finish (each gets its final result) within the grace
period, then exits.
"""

from __future__ import annotations

import logging
import queue
import signal
import sys
import threading
import time
import uuid
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from voxtral_client.proto import realtime_pb2 as pb
from voxtral_client.proto import realtime_pb2_grpc as pb_grpc

from . import __version__
from .audio import AudioError, StreamResampler, decode_f32le, decode_pcm16le
from .engine import Engine
from .programs import BundlePaths, ModelInstance, ProgramError
from .session import END_OF_AUDIO, FLUSH, MAX_NEW_TOKENS, MODEL_EOS, SegmentEnd, SessionError, TextPiece

log = logging.getLogger("voxtral_runtime.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Realtime"].full_name
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 4000, 384000
DEFAULT_PORT = 50051
DEFAULT_MAX_SESSIONS = 4
DEFAULT_IDLE_TIMEOUT_S = 30.0
DEFAULT_MAX_MESSAGE_BYTES = 4 << 20
DEFAULT_GRACE_S = 30.0
POLL_S = 0.25  # how often a waiting session checks for shutdown
# A session that fell behind takes the audio messages already waiting, up to this much audio, in one feed: the session
# then encodes the queued steps up to 16 per encoder call (1.28 s), reading the encoder's weights once per call.
CATCH_UP_AUDIO_S = 1.28
BYTES_PER_SAMPLE = {pb.AUDIO_ENCODING_PCM16LE: 2, pb.AUDIO_ENCODING_F32LE: 4}

REASONS = {FLUSH: pb.FINAL_REASON_FLUSH, END_OF_AUDIO: pb.FINAL_REASON_END_OF_AUDIO,
           MODEL_EOS: pb.FINAL_REASON_MODEL_EOS, MAX_NEW_TOKENS: pb.FINAL_REASON_MAX_NEW_TOKENS}
DECODERS = {pb.AUDIO_ENCODING_PCM16LE: decode_pcm16le, pb.AUDIO_ENCODING_F32LE: decode_f32le}


@dataclass(frozen=True)
class ServerOptions:
    max_sessions: int = DEFAULT_MAX_SESSIONS
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    token: str | None = None


class Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class InstancePool:
    """At most `limit` program instances; idle ones are reused (a new session restarts at position 0)."""

    def __init__(self, engine: Engine, limit: int):
        self.engine, self.limit = engine, limit
        self.lock = threading.Lock()
        self.idle: list[ModelInstance] = []
        self.active = 0

    def acquire(self) -> ModelInstance:
        with self.lock:
            if self.active >= self.limit:
                raise Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"all {self.limit} sessions are in use; retry later")
            self.active += 1
            if self.idle:
                return self.idle.pop()
        try:
            return self.engine.instance()
        except Exception:
            with self.lock:
                self.active -= 1
            raise

    def release(self, instance: ModelInstance) -> None:
        with self.lock:
            self.active -= 1
            self.idle.append(instance)


def _requests_to_queue(requests, inbox: queue.Queue) -> None:
    """Reader thread: every request, then None at half-close, or the exception that ended the stream."""
    try:
        for request in requests:
            inbox.put(request)
        inbox.put(None)
    except Exception as e:  # grpc raises when the client cancels or vanishes
        inbox.put(e)


def _take_waiting_audio(inbox: queue.Queue, max_bytes: int) -> list[bytes]:
    """The audio payloads of the audio messages at the head of the inbox, up to `max_bytes`, without waiting; stops
    at the first message of another kind, which stays first in line."""
    taken, size = [], 0
    with inbox.mutex:
        while inbox.queue and size < max_bytes:
            head = inbox.queue[0]
            if not isinstance(head, pb.TranscribeRequest) or head.WhichOneof("request") != "audio":
                break
            taken.append(inbox.queue.popleft().audio)
            size += len(taken[-1])
        if taken:
            inbox.not_full.notify_all()
    return taken


class RealtimeServicer(pb_grpc.RealtimeServicer):
    """Registered before the server starts (gRPC allows no later registration); answers UNAVAILABLE until
    `ready(engine)` hands it the loaded, warmed-up model."""

    def __init__(self, options: ServerOptions, shutdown: threading.Event):
        self.options, self.shutdown = options, shutdown
        self.engine: Engine | None = None

    def ready(self, engine: Engine, pool: "InstancePool") -> None:
        self.pool, self.rate = pool, engine.spec.meta["sample_rate"]
        self.engine = engine

    def _check_ready(self, context) -> None:
        if self.engine is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the model is still loading; retry shortly")

    # -- helpers ------------------------------------------------------------------------------------------------

    def _check_token(self, context) -> None:
        if self.options.token is None:
            return
        metadata = dict(context.invocation_metadata())
        if metadata.get("authorization") != f"Bearer {self.options.token}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong access token (metadata "
                                                           "'authorization: Bearer <token>')")

    def _next(self, inbox: queue.Queue, context):
        """The next request, None at half-close; raises Abort on idle timeout, returns 'shutdown' when stopping."""
        waited = 0.0
        while True:
            if self.shutdown.is_set() and inbox.empty():
                return "shutdown"
            try:
                item = inbox.get(timeout=POLL_S)
            except queue.Empty:
                waited += POLL_S
                if waited >= self.options.idle_timeout_s:
                    raise Abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"no message for {self.options.idle_timeout_s:g} s; session closed")
                if not context.is_active():
                    raise Abort(grpc.StatusCode.CANCELLED, "client went away")
                continue
            if isinstance(item, Exception):
                raise Abort(grpc.StatusCode.CANCELLED, "client went away")
            return item

    def _config(self, request) -> pb.SessionConfig:
        if request is None:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "empty stream: the first message must be a SessionConfig")
        if request == "shutdown":
            raise Abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
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
        if not config.temperature >= 0:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"temperature must be >= 0, got {config.temperature}")
        if config.mode == pb.TRANSCRIPTION_MODE_STREAMING or config.mode == pb.TRANSCRIPTION_MODE_UNSPECIFIED:
            if not self.engine.streaming:
                raise Abort(grpc.StatusCode.FAILED_PRECONDITION, "this server holds an offline program; ask for "
                                                                 "TRANSCRIPTION_MODE_OFFLINE or serve a streaming "
                                                                 "export")
        return config

    @staticmethod
    def _response(event, processed_s: float) -> pb.TranscribeResponse:
        if isinstance(event, TextPiece):
            return pb.TranscribeResponse(delta=pb.TextDelta(text=event.text, start_s=event.start_s,
                                                            end_s=event.end_s, step=max(event.step, 0),
                                                            token_ids=event.token_ids),
                                         audio_processed_s=processed_s)
        return pb.TranscribeResponse(final=pb.Final(reason=REASONS[event.reason], text=event.text,
                                                    start_s=event.start_s, end_s=event.end_s),
                                     audio_processed_s=processed_s)

    # -- RPCs ---------------------------------------------------------------------------------------------------

    def Transcribe(self, request_iterator, context):
        self._check_token(context)
        self._check_ready(context)
        inbox: queue.Queue = queue.Queue()
        threading.Thread(target=_requests_to_queue, args=(request_iterator, inbox), daemon=True).start()
        session_id = uuid.uuid4().hex[:12]
        instance = None
        try:
            config = self._config(self._next(inbox, context))
            instance = self.pool.acquire()
            session = self.engine.session(
                instance, temperature=config.temperature, seed=config.seed if config.HasField("seed") else None,
                max_new_tokens=config.max_new_tokens or None, token_ids=config.token_ids)
            resampler = StreamResampler(config.sample_rate_hz, self.rate)
            decode = DECODERS[config.encoding]
            catch_up_bytes = int(CATCH_UP_AUDIO_S * config.sample_rate_hz) * BYTES_PER_SAMPLE[config.encoding]
            log.info("session %s started (%d Hz, %s)", session_id, config.sample_rate_hz,
                     pb.AudioEncoding.Name(config.encoding))
            yield pb.TranscribeResponse(started=pb.SessionStarted(session_id=session_id))
            while True:
                request = self._next(inbox, context)
                if request is None or request == "shutdown":
                    events = session.feed(resampler.flush()) + session.finish()
                    yield from (self._response(e, session.audio_processed_s) for e in events)
                    return
                kind = request.WhichOneof("request")
                if kind == "audio":
                    samples, bad = [], None
                    for payload in [request.audio, *_take_waiting_audio(inbox, catch_up_bytes)]:
                        try:
                            samples.append(decode(payload))
                        except AudioError as e:
                            bad = e  # the audio before it is still transcribed, then the call ends
                            break
                    joined = samples[0] if len(samples) == 1 else np.concatenate(samples) if samples else None
                    events = session.feed(resampler.process(joined)) if joined is not None else []
                    if bad is not None:
                        yield from (self._response(e, session.audio_processed_s) for e in events)
                        raise Abort(grpc.StatusCode.INVALID_ARGUMENT, str(bad)) from bad
                elif kind == "control" and request.control == pb.CONTROL_FLUSH:
                    events = session.feed(resampler.flush()) + session.flush()
                elif kind == "config":
                    raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "a second SessionConfig; send it only first")
                else:
                    raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown request {kind or '(empty)'}")
                for event in events:
                    yield self._response(event, session.audio_processed_s)
                    if isinstance(event, SegmentEnd) and event.reason == MAX_NEW_TOKENS:
                        return
        except Abort as e:
            log.info("session %s: %s %s", session_id, e.code.name, e.message)
            context.abort(e.code, e.message)
        except SessionError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        finally:
            if instance is not None:
                self.pool.release(instance)
            log.info("session %s ended", session_id)

    def Describe(self, request, context):
        self._check_token(context)
        self._check_ready(context)
        spec = self.engine.spec.describe()
        return pb.ModelDescription(
            model=str(self.engine.spec.paths.model.parent.name), server_version=f"voxtral-runtime {__version__}",
            backend=spec["backend"], quantization=spec["quantization"], dtype=spec["dtype"],
            program=pb.PROGRAM_KIND_STREAMING if spec["streaming"] else pb.PROGRAM_KIND_OFFLINE,
            delay_ms=spec["delay_ms"], step_ms=spec["step_ms"], model_sample_rate_hz=spec["sample_rate"],
            min_sample_rate_hz=MIN_SAMPLE_RATE, max_sample_rate_hz=MAX_SAMPLE_RATE,
            encodings=list(DECODERS), vocab_size=spec["vocab_size"],
            encoder_window_frames=spec["encoder_window_frames"],
            decoder_window_tokens=spec["decoder_window_tokens"] if spec["streaming"] else 0,
            max_seq_len=spec["max_seq_len"],
            limits=pb.ServerLimits(max_sessions=self.options.max_sessions, active_sessions=self.pool.active,
                                   max_message_bytes=self.options.max_message_bytes,
                                   idle_timeout_s=self.options.idle_timeout_s,
                                   auth_required=self.options.token is not None))


class Server:
    """Loads and warms the model, then serves; `stop(grace)` drains sessions in flight."""

    def __init__(self, paths: BundlePaths, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 options: ServerOptions = ServerOptions(), tls: tuple[bytes, bytes] | None = None):
        self.shutdown = threading.Event()
        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2 * options.max_sessions + 8),
            options=[("grpc.max_receive_message_length", options.max_message_bytes),
                     ("grpc.max_send_message_length", options.max_message_bytes)])
        self.health = health.HealthServicer()
        self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc)
        address = f"{host}:{port}"
        if tls:
            self.port = self.grpc.add_secure_port(address, grpc.ssl_server_credentials([tls]))
        else:
            self.port = self.grpc.add_insecure_port(address)
        if not self.port:
            raise ProgramError(f"cannot listen on {address}")
        self.servicer = RealtimeServicer(options, self.shutdown)
        pb_grpc.add_RealtimeServicer_to_server(self.servicer, self.grpc)
        self.grpc.start()  # health answers NOT_SERVING while the model loads
        try:
            self.engine = Engine(paths)
            pool = InstancePool(self.engine, options.max_sessions)
            first = self.engine.instance()
            self.engine.warm_up(first)
            pool.idle.append(first)
        except Exception:
            self.grpc.stop(0)
            raise
        self.servicer.ready(self.engine, pool)
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float) -> None:
        self.health.enter_graceful_shutdown()
        self.shutdown.set()
        self.grpc.stop(grace).wait()

    def wait(self) -> None:
        self.grpc.wait_for_termination()


def add_arguments(p) -> None:
    p.add_argument("bundle", nargs="?", help="bundle directory from voxtral-export")
    p.add_argument("--model_path", "--model-path", help="model.pte (overrides the bundle's)")
    p.add_argument("--tokenizer_path", "--tokenizer-path", help="tekken.json")
    p.add_argument("--preprocessor_path", "--preprocessor-path", help="preprocessor.pte")
    p.add_argument("--host", default="127.0.0.1", help="default: %(default)s (0.0.0.0 to listen on all)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="default: %(default)s; 0 picks a free port")
    p.add_argument("--max-sessions", type=int, default=DEFAULT_MAX_SESSIONS,
                   help="concurrent sessions; each holds its own program instance (default: %(default)s)")
    p.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT_S,
                   help="seconds without a message before a session ends (default: %(default)s)")
    p.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                   help="largest accepted request message (default: %(default)s)")
    p.add_argument("--grace", type=float, default=DEFAULT_GRACE_S,
                   help="seconds sessions in flight get to finish on SIGTERM (default: %(default)s)")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain (with --tls-key: serve TLS only)")
    p.add_argument("--tls-key", type=Path, help="PEM private key")
    p.add_argument("--token", help="require 'authorization: Bearer <token>' on every call (or set "
                                   "VOXTRAL_TOKEN)")
    p.add_argument("--port-file", type=Path, help="write the bound port here once serving (for scripts)")


def run(args) -> int:
    import os

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if bool(args.tls_cert) != bool(args.tls_key):
        print("voxtral-runtime serve: error: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if args.max_sessions < 1:
        print("voxtral-runtime serve: error: --max-sessions must be at least 1", file=sys.stderr)
        return 2
    try:
        paths = BundlePaths.resolve(args.bundle, args.model_path, args.preprocessor_path, args.tokenizer_path)
        tls = (args.tls_key.read_bytes(), args.tls_cert.read_bytes()) if args.tls_cert else None
        options = ServerOptions(max_sessions=args.max_sessions, idle_timeout_s=args.idle_timeout,
                                max_message_bytes=args.max_message_bytes,
                                token=args.token or os.environ.get("VOXTRAL_TOKEN") or None)
        started = time.monotonic()
        server = Server(paths, args.host, args.port, options, tls)
    except (ProgramError, OSError) as e:
        print(f"voxtral-runtime serve: error: {e}", file=sys.stderr)
        return 2
    log.info("serving %s on %s:%d (%s, %s, up to %d sessions, %s) after %.1f s; Ctrl+C or SIGTERM to stop",
             paths.model, args.host, server.port, "TLS" if tls else "plaintext",
             "token required" if options.token else "no auth", options.max_sessions,
             "XNNPACK weights shared" if server.engine.spec.shares_weights else "weights per session",
             time.monotonic() - started)
    if args.port_file:
        args.port_file.write_text(str(server.port))
    stopping = threading.Event()

    def on_signal(signum, frame):
        if not stopping.is_set():
            stopping.set()
            log.info("stopping: no new sessions, %g s for those in flight", args.grace)
            threading.Thread(target=server.stop, args=(args.grace,), daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.wait()
    log.info("stopped")
    return 0
