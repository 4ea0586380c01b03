"""`voxtral-runtime serve`: the model behind a gRPC bidirectional stream (proto/voxtral/realtime/v1).

This file is the server's lifecycle and command line: start gRPC (health answers NOT_SERVING while the model loads),
load and warm the model, serve, and stop. The service itself is servicer.py, admission pool.py, the per-call
request buffer inbox.py, the limits limits.py; the optional websocket endpoint (vLLM's /v1/realtime protocol) is
realtime_ws.py and the Prometheus metrics metrics.py. Both transports share the engine and its session slots.

Stopping (SIGTERM or Ctrl+C): health turns NOT_SERVING, no new session is accepted, every session stops reading its
stream and decodes the audio it had received, then ends with a Final of reason SERVER_SHUTDOWN and the status
UNAVAILABLE (a session whose client had already half-closed ends normally). Sessions still busy when --grace runs
out, or at a second signal, are cancelled.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from voxtral_client.proto import realtime_pb2 as pb
from voxtral_client.proto import realtime_pb2_grpc as pb_grpc

from . import limits
from .engine import Engine
from .limits import ServerOptions
from .metrics import Metrics
from .pool import InstancePool
from .bundle import BundlePaths, ProgramError
from .realtime_ws import RealtimeWebsocket
from .servicer import RealtimeServicer

log = logging.getLogger("voxtral_runtime.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Realtime"].full_name
DEFAULT_PORT = 50051
DEFAULT_GRACE_S = 30.0
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


class OneLineParseErrors(logging.Filter):
    """gRPC logs a full traceback for every request message it cannot parse. Those are a client's bad bytes, not a
    server fault (the call is refused with INTERNAL by gRPC itself): one line says so."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Exception deserializing"):
            record.msg, record.args = "refused a request message that does not parse (a client's bad bytes)", ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


PARSE_ERRORS = OneLineParseErrors()


class Server:
    """Loads and warms the model, then serves; `stop(grace)` drains sessions in flight."""

    def __init__(self, paths: BundlePaths, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 options: ServerOptions = ServerOptions(), tls: tuple[bytes, bytes] | None = None,
                 verify: bool = True, websocket_port: int | None = None, metrics_port: int | None = None):
        """`websocket_port`, `metrics_port`: serve those too (0 picks a free port; None: not served); the bound
        ports are `self.websocket_port` and `self.metrics_port`."""
        self.shutdown = threading.Event()
        logging.getLogger("grpc._common").addFilter(PARSE_ERRORS)  # adding the same filter twice is a no-op
        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2 * options.max_sessions + 8),
            options=[("grpc.max_receive_message_length", options.max_message_bytes),
                     ("grpc.max_send_message_length", options.max_message_bytes),
                     # Keep each stream's receive window at 64 KiB: with probing it grows to megabytes, minutes of
                     # audio held in gRPC beyond --max-buffered-audio (docs/runtime.md, Backpressure).
                     ("grpc.http2.bdp_probe", 0)])
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
        self.websocket: RealtimeWebsocket | None = None
        self.metrics: Metrics | None = None
        try:
            self.engine = Engine(paths, verify=verify)
            pool = InstancePool(self.engine, options.max_sessions)
            first = self.engine.instance()
            self.engine.warm_up(first)
            self.engine.release(first)
            meta = self.engine.spec.meta
            self.metrics = Metrics(meta.step_samples / meta.sample_rate, lambda: self.engine.instances_loaded,
                                   options.max_sessions)
            self.metrics_port = self.metrics.serve(host, metrics_port) if metrics_port is not None else None
            if websocket_port is not None:
                self.websocket = RealtimeWebsocket(self.engine, pool, options, self.shutdown, self.metrics, host,
                                                   websocket_port, tls)
        except Exception:
            self.grpc.stop(0)
            if self.metrics is not None:
                self.metrics.close()
            raise
        self.websocket_port = self.websocket.port if self.websocket else None
        self.servicer.ready(self.engine, pool, self.metrics)
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float) -> None:
        """No new sessions; those in flight decode what they received within `grace` seconds, then are cut."""
        deadline = time.monotonic() + grace
        self.health.enter_graceful_shutdown()
        self.shutdown.set()
        self.servicer.stop_reading()
        self.grpc.stop(grace).wait()
        self._close_others(max(deadline - time.monotonic(), 0))

    def kill(self) -> None:
        """Ends every call now (UNAVAILABLE; websockets closed with 1001)."""
        self.shutdown.set()
        self.grpc.stop(0)
        self._close_others(0)

    def _close_others(self, grace: float) -> None:
        if self.websocket is not None:
            self.websocket.close(grace)
        if self.metrics is not None:
            self.metrics.close()

    def wait(self) -> None:
        self.grpc.wait_for_termination()


def add_arguments(p) -> None:
    p.add_argument("bundle", nargs="?", help="bundle directory from voxtral-export")
    p.add_argument("--model_path", "--model-path", help="model.pte (overrides the bundle's)")
    p.add_argument("--tokenizer_path", "--tokenizer-path", help="tekken.json")
    p.add_argument("--preprocessor_path", "--preprocessor-path", help="preprocessor.pte")
    p.add_argument("--host", default="127.0.0.1", help="default: %(default)s (0.0.0.0 to listen on all)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="default: %(default)s; 0 picks a free port")
    for limit in limits.LIMITS:
        default = getattr(ServerOptions, limit.field)
        p.add_argument(limit.flag, type=limit.type, default=default, dest=limit.field,
                       metavar="S" if limit.type is float else "N",
                       help=limit.help if default is None else f"{limit.help} (default: %(default)s)")
    p.add_argument("--grace", type=float, default=DEFAULT_GRACE_S,
                   help="seconds sessions in flight get to finish on SIGTERM (default: %(default)s)")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain (with --tls-key: serve TLS only)")
    p.add_argument("--tls-key", type=Path, help="PEM private key")
    p.add_argument("--token", help="require 'authorization: Bearer <token>' on every call (or set "
                                   "VOXTRAL_TOKEN)")
    p.add_argument("--websocket-port", type=int, default=None,
                   help="also serve vLLM's realtime websocket protocol (ws://HOST:PORT/v1/realtime) on this port, "
                        "with the same sessions, limits, token and TLS; 0 picks a free port (default: off)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics (http://HOST:PORT/metrics) on this port; 0 picks a free port "
                        "(default: off)")
    p.add_argument("--port-file", type=Path, help="write the bound port here once serving (for scripts); with "
                                                  "--websocket-port/--metrics-port, also 'websocket PORT' and "
                                                  "'metrics PORT' lines")
    p.add_argument("--no-verify", action="store_true",
                   help="skip checking the bundle's files against its manifest's sha256 (about 1.5 s for 2.5 GB)")


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if bool(args.tls_cert) != bool(args.tls_key):
        print("voxtral-runtime serve: error: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    tls_wanted = bool(args.tls_cert)
    options = ServerOptions(**{limit.field: getattr(args, limit.field) for limit in limits.LIMITS},
                            token=args.token or os.environ.get("VOXTRAL_TOKEN") or None)
    try:
        options.check()
    except ValueError as e:
        print(f"voxtral-runtime serve: error: {e}", file=sys.stderr)
        return 2
    if options.token and not tls_wanted and args.host not in LOOPBACK_HOSTS:
        log.warning("an access token is required but the server listens on %s in plaintext: the token crosses the "
                    "network readable by anyone on the path; serve TLS (--tls-cert/--tls-key)", args.host)
    try:
        paths = BundlePaths.resolve(args.bundle, args.model_path, args.preprocessor_path, args.tokenizer_path)
        tls = (args.tls_key.read_bytes(), args.tls_cert.read_bytes()) if args.tls_cert else None
        started = time.monotonic()
        server = Server(paths, args.host, args.port, options, tls, verify=not args.no_verify,
                        websocket_port=args.websocket_port, metrics_port=args.metrics_port)
    except (ProgramError, OSError) as e:
        print(f"voxtral-runtime serve: error: {e}", file=sys.stderr)
        return 2
    log.info("serving %s on %s:%d (%s, %s, up to %d sessions, %s) after %.1f s; Ctrl+C or SIGTERM to stop",
             paths.model, args.host, server.port, "TLS" if tls else "plaintext",
             "token required" if options.token else "no auth", options.max_sessions,
             "XNNPACK weights shared" if server.engine.spec.shares_weights else "weights per session",
             time.monotonic() - started)
    if server.websocket_port is not None:
        log.info("realtime websocket on %s://%s:%d/v1/realtime", "wss" if tls else "ws", args.host,
                 server.websocket_port)
    if server.metrics_port is not None:
        log.info("Prometheus metrics on http://%s:%d/metrics", args.host, server.metrics_port)
    if args.port_file:
        extra = "".join(f"\n{name} {port}" for name, port in (("websocket", server.websocket_port),
                                                              ("metrics", server.metrics_port)) if port is not None)
        args.port_file.write_text(f"{server.port}{extra}")
    stopping = threading.Event()

    def on_signal(signum, frame):
        if not stopping.is_set():
            stopping.set()
            log.info("stopping: no new sessions, %g s for those in flight (signal again to cut them now)", args.grace)
            threading.Thread(target=server.stop, args=(args.grace,), daemon=True).start()
        else:
            log.info("stopping now")
            server.kill()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.wait()
    log.info("stopped")
    return 0
