"""`voxtral-runtime serve`: the model behind a gRPC bidirectional stream (proto/voxtral/realtime/v1).

This file is the server's lifecycle: start gRPC (health answers NOT_SERVING while the model loads), load and warm
the model, serve, and stop; serve.py is its command line (flags, signals). The service itself is servicer.py,
admission pool.py, the per-call request buffer inbox.py, the limits limits.py; the optional websocket endpoint
(vLLM's /v1/realtime protocol) is realtime_ws.py and the Prometheus metrics metrics.py. Both transports share the
engine and its session slots.

Stopping (SIGTERM or Ctrl+C): health turns NOT_SERVING, no new session is accepted, every session stops reading its
stream and decodes the audio it had received, then ends with a Final of reason SERVER_SHUTDOWN and the status
UNAVAILABLE (a session whose client had already half-closed ends normally). Sessions still busy when --grace runs
out, or at a second signal, are cancelled.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from voxtral_client.proto import realtime_pb2 as pb
from voxtral_client.proto import realtime_pb2_grpc as pb_grpc

from .bundle import BundlePaths, ProgramError
from .engine import Engine
from .limits import ServerOptions
from .metrics import Metrics
from .pool import InstancePool
from .realtime_ws import RealtimeWebsocket
from .servicer import RealtimeServicer

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Realtime"].full_name
DEFAULT_PORT = 50051
DEFAULT_GRACE_S = 30.0


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
        try:  # grpcio raises RuntimeError when the address cannot be bound (older versions returned port 0)
            if tls:
                self.port = self.grpc.add_secure_port(address, grpc.ssl_server_credentials([tls]))
            else:
                self.port = self.grpc.add_insecure_port(address)
        except RuntimeError:
            self.port = 0
        if not self.port:
            raise ProgramError(f"cannot listen on {address}: another process may hold the port; choose another "
                               f"with --port (0 picks a free one)")
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
