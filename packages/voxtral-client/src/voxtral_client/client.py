"""A thin client for the Voxtral Realtime gRPC service (proto/voxtral/realtime/v1/realtime.proto).

    from voxtral_client.client import FLUSH, RealtimeClient
    from voxtral_client.audio import file_chunks, read_wav

    wav = read_wav("speech.wav")
    with RealtimeClient("127.0.0.1:50051") as client:
        for event in client.transcribe(file_chunks(wav), wav.sample_rate, wav.encoding):
            if event.kind == "delta":
                print(event.text, end="", flush=True)

Several replicas: pass a list of servers (or "host1:port,host2:port"), or one DNS name that resolves to several
addresses. gRPC then balances sessions round-robin over the replicas that answer their health check SERVING, and
a session refused at admission (RESOURCE_EXHAUSTED: that replica is full; UNAVAILABLE: it is loading or stopping)
is retried on the next one (SERVICE_CONFIG below; docs/runtime.md, "Replicas").

`transcribe` takes any iterable of audio chunks (bytes in the session's encoding, or numpy arrays, converted) in
which the FLUSH sentinel asks the server to emit everything pending; the end of the iterable ends the audio. It
yields `Event`s as the server streams them. Server errors are raised as `RealtimeError` (a gRPC status code and
its message).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from .audio import F32LE, PCM16LE, SAMPLE_BYTES
from .proto import realtime_pb2 as pb
from .proto import realtime_pb2_grpc as pb_grpc

DEFAULT_SERVER = "127.0.0.1:50051"
SERVICE = pb.DESCRIPTOR.services_by_name["Realtime"].full_name
# Round-robin over the replicas whose health service says SERVING; a call refused before the server answered
# anything (admission: all slots busy, loading, stopping) is retried on the next replica. gRPC retries only calls
# that have received no response and whose sent messages still fit its retry buffer (256 KiB by default: 8 s of
# 16 kHz PCM16), so a session that has started is never replayed.
SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": SERVICE},
    "methodConfig": [{
        "name": [{"service": SERVICE}],
        "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
                        "retryableStatusCodes": ["RESOURCE_EXHAUSTED", "UNAVAILABLE"]},
    }],
})

_ENCODINGS = {PCM16LE: pb.AUDIO_ENCODING_PCM16LE, F32LE: pb.AUDIO_ENCODING_F32LE}
_REASONS = {
    pb.FINAL_REASON_FLUSH: "flush",
    pb.FINAL_REASON_END_OF_AUDIO: "end_of_audio",
    pb.FINAL_REASON_MODEL_EOS: "model_eos",
    pb.FINAL_REASON_MAX_NEW_TOKENS: "max_new_tokens",
    pb.FINAL_REASON_SERVER_SHUTDOWN: "server_shutdown",
    pb.FINAL_REASON_SESSION_LIMIT: "session_limit",
    pb.FINAL_REASON_ENDPOINT: "endpoint",
}


@dataclass(frozen=True)
class Endpointing:
    """Server-side endpointing for a session (SessionConfig.endpointing); None fields take the server's defaults
    (threshold 0.5, 500 ms of silence, 300 ms of audio before the speech)."""

    silence_ms: int | None = None
    prefix_ms: int | None = None
    threshold: float | None = None

    def message(self) -> pb.Endpointing:
        e = pb.Endpointing()
        if self.threshold is not None:
            e.threshold = self.threshold
        if self.silence_ms is not None:
            e.silence_duration_ms = self.silence_ms
        if self.prefix_ms is not None:
            e.prefix_padding_ms = self.prefix_ms
        return e


class _Flush:
    """The FLUSH sentinel: put it in the audio iterable to send a flush control."""

    def __repr__(self) -> str:
        return "FLUSH"


FLUSH = _Flush()


class RealtimeError(Exception):
    """A call that ended with a non-OK gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_rpc(cls, error: grpc.RpcError) -> RealtimeError:
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "(no message)")


@dataclass(frozen=True)
class Event:
    """One server event.

    kind: "started" (session accepted), "delta" (new text; never revised) or "final" (end of a segment).
    For a delta, start_s/end_s are the audio span the text belongs to and `step` the 80 ms decode step; for a
    final, `text` is the whole segment, start_s/end_s its span and `reason` why it ended ("flush", "end_of_audio",
    "model_eos", "max_new_tokens", "server_shutdown", "session_limit", "endpoint"). Times are seconds of the audio
    sent in this session; audio_received_s - audio_processed_s is how much of it waits for the model (the session's
    lag).
    """

    kind: str
    text: str = ""
    start_s: float = 0.0
    end_s: float = 0.0
    step: int | None = None
    token_ids: tuple[int, ...] = ()
    reason: str | None = None
    session_id: str | None = None
    audio_processed_s: float = 0.0
    audio_received_s: float = 0.0
    response: Any = field(default=None, repr=False, compare=False)  # the TranscribeResponse

    @property
    def is_final(self) -> bool:
        return self.kind == "final"

    @classmethod
    def from_response(cls, r: pb.TranscribeResponse) -> Event:
        which = r.WhichOneof("event")
        common = {"audio_processed_s": r.audio_processed_s, "audio_received_s": r.audio_received_s, "response": r}
        if which == "delta":
            d = r.delta
            return cls("delta", d.text, d.start_s, d.end_s, d.step, tuple(d.token_ids), **common)
        if which == "final":
            f = r.final
            reason = _REASONS.get(f.reason, pb.FinalReason.Name(f.reason) if f.reason in pb.FinalReason.values()
                                  else str(f.reason))
            return cls("final", f.text, f.start_s, f.end_s, reason=reason, **common)
        if which == "started":
            return cls("started", session_id=r.started.session_id, **common)
        return cls("unknown", **common)  # a newer server's event this client does not know

    def to_dict(self, token_ids: bool = False) -> dict:
        """A JSON-ready dict (times rounded to the millisecond); token ids only when asked for."""
        out: dict[str, Any] = {"type": self.kind}
        if self.kind == "started":
            out["session_id"] = self.session_id
        elif self.kind in ("delta", "final"):
            out.update(text=self.text, start_s=round(self.start_s, 3), end_s=round(self.end_s, 3))
            if self.kind == "delta":
                out["step"] = self.step
                if token_ids:
                    out["token_ids"] = list(self.token_ids)
            else:
                out["reason"] = self.reason
        out["final"] = self.is_final
        out["audio_processed_s"] = round(self.audio_processed_s, 3)
        return out


def encode_chunk(chunk: bytes | bytearray | memoryview | np.ndarray, encoding: str) -> bytes:
    """Audio chunk -> bytes in `encoding`.

    Bytes are passed through (they must hold whole samples). Arrays are converted: integers are full scale (int16
    +-32768), floats in [-1, 1]; a 2-D array (samples, channels) is downmixed to mono.
    """
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        data = bytes(chunk)
        if len(data) % SAMPLE_BYTES[encoding]:
            raise ValueError(f"{encoding} chunk of {len(data)} bytes is not a whole number of samples")
        return data
    if not isinstance(chunk, np.ndarray):
        raise TypeError(f"audio chunks must be bytes or numpy arrays, not {type(chunk).__name__}")
    if chunk.ndim not in (1, 2):
        raise ValueError(f"audio arrays must be 1-D or (samples, channels), got shape {chunk.shape}")
    kind = chunk.dtype.kind
    if kind == "i":
        x = chunk.astype(np.float64) / (np.iinfo(chunk.dtype).max + 1.0)
    elif kind == "u":
        mid = (np.iinfo(chunk.dtype).max + 1.0) / 2
        x = (chunk.astype(np.float64) - mid) / mid
    elif kind == "f":
        x = chunk.astype(np.float64)
    else:
        raise TypeError(f"unsupported audio array dtype {chunk.dtype}")
    if x.ndim == 2:
        x = x.mean(axis=1)
    if encoding == F32LE:
        return x.astype("<f4").tobytes()
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2").tobytes()


def split_servers(servers: str | Sequence[str]) -> list[str]:
    """"a:1,b:2" or ["a:1", "b:2"] -> ["a:1", "b:2"]."""
    items = servers.split(",") if isinstance(servers, str) else list(servers)
    items = [s.strip() for s in items if s.strip()]
    if not items:
        raise ValueError("no server address given")
    return items


def channel_target(servers: list[str]) -> str:
    """One server: itself (gRPC's DNS resolver then uses every address of the name). Several: their addresses,
    resolved now, as one gRPC target ("ipv4:1.2.3.4:50051,1.2.3.5:50051")."""
    if len(servers) == 1:
        return servers[0]
    addresses: dict[int, list[str]] = {4: [], 6: []}
    for server in servers:
        host, _, port = server.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise ValueError(f"server {server!r} is not host:port")
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise ValueError(f"cannot resolve server {server!r}: {e.strerror}") from None
        for family, *_, address in infos:
            ip = ipaddress.ip_address(address[0])
            entry = f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}"
            if entry not in addresses[ip.version]:
                addresses[ip.version].append(entry)
    version = 4 if addresses[4] else 6
    return f"ipv{version}:" + ",".join(addresses[version])


class RealtimeClient:
    """Client of one server or several replicas. Thread-safe; several sessions may run at once over its channel.

    server: "host:port", or several ("host1:port,host2:port" or a list; see the module's docstring). tls: use TLS
    (system roots, or ca_cert: a PEM file; with several servers the certificates are checked against the first
    one's host name). token: sent as `authorization: Bearer <token>` with every call. options: extra gRPC
    channel options.
    """

    def __init__(
        self,
        server: str | Sequence[str] = DEFAULT_SERVER,
        tls: bool = False,
        ca_cert: str | Path | None = None,
        token: str | None = None,
        options: list[tuple[str, Any]] | None = None,
    ):
        servers = split_servers(server)
        self.server = ",".join(servers)
        if ca_cert is not None and not tls:
            raise ValueError("ca_cert needs tls=True")
        options = [("grpc.service_config", SERVICE_CONFIG), *(options or [])]
        if len(servers) > 1:
            options.append(("grpc.default_authority", servers[0]))
        target = channel_target(servers)
        if tls:
            roots = Path(ca_cert).read_bytes() if ca_cert is not None else None
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(roots), options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._stub = pb_grpc.RealtimeStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RealtimeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Connect now; raise RealtimeError(UNAVAILABLE) with the reason if that fails or takes over `timeout` s."""
        done = threading.Event()
        last: list[grpc.ChannelConnectivity] = []
        final = (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                 grpc.ChannelConnectivity.SHUTDOWN)

        def on_change(state: grpc.ChannelConnectivity) -> None:
            last.append(state)
            if state in final:
                done.set()

        self._channel.subscribe(on_change, try_to_connect=True)
        try:
            connected = done.wait(timeout)
        finally:
            self._channel.unsubscribe(on_change)
        if not connected:
            raise RealtimeError(grpc.StatusCode.UNAVAILABLE,
                                f"cannot connect to {self.server}: no connection within {timeout:g} s")
        if last[-1] != grpc.ChannelConnectivity.READY:
            reason = "connection failed"
            try:  # a call on a failed channel fails at once with gRPC's own reason (refused, TLS handshake, ...)
                self._stub.Describe(pb.DescribeRequest(), timeout=min(timeout, 2.0), metadata=self._metadata)
            except grpc.RpcError as e:
                reason = e.details() or reason
            except Exception:
                pass
            raise RealtimeError(grpc.StatusCode.UNAVAILABLE, f"cannot connect to {self.server}: {reason}")

    def describe(self, timeout: float | None = 10.0) -> pb.ModelDescription:
        """The served model and the server's limits (a ModelDescription message)."""
        try:
            return self._stub.Describe(pb.DescribeRequest(), timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise RealtimeError.from_rpc(e) from None

    def transcribe(
        self,
        audio_chunks: Iterable[bytes | np.ndarray | _Flush],
        sample_rate: int,
        encoding: str = PCM16LE,
        *,
        token_ids: bool = False,
        offline: bool = False,
        temperature: float = 0.0,
        seed: int | None = None,
        max_new_tokens: int = 0,
        endpointing: Endpointing | None = None,
        timeout: float | None = None,
    ) -> Iterator[Event]:
        """Stream audio_chunks to the server and yield its events until the session ends.

        audio_chunks: mono audio at sample_rate in `encoding` ("pcm16le" or "f32le"), as bytes or numpy arrays, any
        chunk size; the FLUSH sentinel sends a flush control. The iterable is consumed on a gRPC thread, at the
        pace it yields (a generator may block, e.g. on a microphone); its end half-closes the stream, after which
        the server sends the last Final. Stopping the iteration early (break, close) cancels the call.
        `endpointing`: the server ends a segment at each pause (a Final with reason "endpoint") and does not run
        the model while there is no speech (streaming mode).
        Raises RealtimeError for a non-OK status, or the exception the audio iterable raised.
        """
        if encoding not in _ENCODINGS:
            raise ValueError(f"encoding must be one of {sorted(_ENCODINGS)}, got {encoding!r}")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        config = pb.SessionConfig(
            encoding=_ENCODINGS[encoding],
            sample_rate_hz=int(sample_rate),
            mode=pb.TRANSCRIPTION_MODE_OFFLINE if offline else pb.TRANSCRIPTION_MODE_STREAMING,
            token_ids=token_ids,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
        )
        if seed is not None:
            config.seed = seed
        if endpointing is not None:
            config.endpointing.CopyFrom(endpointing.message())
        return self._stream(config, audio_chunks, encoding, timeout)

    def _stream(self, config: pb.SessionConfig, audio_chunks: Iterable, encoding: str,
                timeout: float | None) -> Iterator[Event]:
        failure: list[Exception] = []
        call_box: list[grpc.Future] = []
        call_made = threading.Event()

        def requests() -> Iterator[pb.TranscribeRequest]:
            yield pb.TranscribeRequest(config=config)
            try:
                for chunk in audio_chunks:
                    if chunk is FLUSH:
                        yield pb.TranscribeRequest(control=pb.CONTROL_FLUSH)
                    else:
                        data = encode_chunk(chunk, encoding)
                        if data:
                            yield pb.TranscribeRequest(audio=data)
            except Exception as e:  # cancel and re-raise it to the caller (gRPC would log it and say only UNKNOWN)
                failure.append(e)
                call_made.wait(10.0)
                if call_box:
                    call_box[0].cancel()

        call = self._stub.Transcribe(requests(), timeout=timeout, metadata=self._metadata)
        call_box.append(call)
        call_made.set()
        try:
            for response in call:
                yield Event.from_response(response)
            if failure:
                raise failure[0]
        except grpc.RpcError as e:
            if failure:
                raise failure[0] from None
            raise RealtimeError.from_rpc(e) from None
        finally:
            call.cancel()  # no-op when the call has ended; stops the stream when the caller stopped early
