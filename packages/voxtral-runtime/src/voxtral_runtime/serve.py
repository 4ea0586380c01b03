"""`voxtral-runtime serve`: its flags, and the signals that stop the server (server.py) gracefully, then at once."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from . import limits
from .bundle import BundlePaths, ProgramError
from .limits import ServerOptions
from .server import DEFAULT_GRACE_S, DEFAULT_PORT, Server

log = logging.getLogger("voxtral_runtime.server")  # the server's one log, whichever file writes to it

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


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
