"""Real servers on loopback for tests: in-process (fast) or as a `voxtral-runtime serve` process (signals)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from voxtral_client.proto import realtime_pb2_grpc as pb_grpc
from voxtral_runtime.bundle import BundlePaths
from voxtral_runtime.limits import ServerOptions
from voxtral_runtime.server import Server


def start_in_process(bundle: Path, websocket_port: int | None = None, metrics_port: int | None = None,
                     **options) -> Server:
    tls = options.pop("tls", None)
    return Server(BundlePaths.resolve(bundle), "127.0.0.1", 0, ServerOptions(**options), tls,
                  websocket_port=websocket_port, metrics_port=metrics_port)


class ServerProcess:
    """`voxtral-runtime serve` in a subprocess; waits until it serves (it writes its port when ready)."""

    def __init__(self, bundle: Path, tmp: Path, *args: str, timeout: float = 180):
        port_file = tmp / f"port-{time.monotonic_ns()}"
        self.log = open(tmp / f"serve-{time.monotonic_ns()}.log", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "voxtral_runtime.cli", "serve", str(bundle), "--port",
                                      "0", "--port-file", str(port_file), *args],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=os.environ.copy())
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{self.output()}")
            time.sleep(0.2)
        grpc_port, *others = port_file.read_text().splitlines()
        self.address = f"127.0.0.1:{grpc_port}"
        self.ports = dict(line.split() for line in others)  # "websocket PORT", "metrics PORT"

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


def transcribe(address: str, requests, timeout: float = 60):
    """One Transcribe call on its own channel, run to its end: (status code, details, responses received)."""
    with grpc.insecure_channel(address) as channel:
        got = []
        try:
            for r in pb_grpc.RealtimeStub(channel).Transcribe(iter(requests), timeout=timeout):
                got.append(r)
            return grpc.StatusCode.OK, "", got
        except grpc.RpcError as e:
            return e.code(), e.details() or "", got


def finals(responses) -> list[int]:
    """The reasons of the Finals among `responses`, in order."""
    return [r.final.reason for r in responses if r.WhichOneof("event") == "final"]
