"""Load and fault suite: a real `voxtral-runtime serve` process on loopback under hostile and careless clients.

Rounds of clean sessions (in a row and at once) run beside hostile ones: huge sample values, floods of flushes and of
empty messages, a client that pushes a minute of audio and never reads, random bytes as audio, undecodable request
messages and raw junk on the port. Every clean session must give the reference text, every hostile one its status
code, and the server's memory must stay flat. Then SIGTERM and SIGKILL under load. Bounded in time (about two
minutes; VOXTRAL_SOAK_S=300 makes the soak longer) and loopback only; the figures are printed (run with -s) and
recorded in docs/runtime.md.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from servers import ServerProcess
from servers import transcribe as call
from signals import pcm16
from voxtral_client.proto import realtime_pb2 as pb
from voxtral_client.proto import realtime_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow
RATE = 16000
SOAK_S = float(os.environ.get("VOXTRAL_SOAK_S", "45"))
TRANSCRIBE = "/voxtral.realtime.v1.Realtime/Transcribe"


@pytest.fixture(scope="module")
def bundle(bundles):
    return bundles("xnnpack-stream")


def config(encoding=pb.AUDIO_ENCODING_PCM16LE) -> pb.TranscribeRequest:
    return pb.TranscribeRequest(config=pb.SessionConfig(encoding=encoding, sample_rate_hz=RATE))


def chunks(data: bytes, size: int = 2560):
    return [pb.TranscribeRequest(audio=data[i : i + size]) for i in range(0, len(data), size)]


def text(responses) -> str:
    return "".join(r.delta.text for r in responses if r.WhichOneof("event") == "delta")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


# -- hostile clients: each returns None when the server answered as the contract says, else what went wrong ------
# Refusing a hostile client at admission because every slot is busy is also an answer the contract allows.

def busy(status, details) -> bool:
    return status == grpc.StatusCode.RESOURCE_EXHAUSTED and "sessions are in use" in details


def huge_values(address, rng):
    hostile = np.full(RATE // 4, 3e38, "<f4").tobytes()
    status, details, _ = call(address, [config(pb.AUDIO_ENCODING_F32LE), pb.TranscribeRequest(audio=hostile)])
    return None if status == grpc.StatusCode.INVALID_ARGUMENT or busy(status, details) else \
        f"huge values: {status} {details}"


def flush_flood(address, rng):
    flush = pb.TranscribeRequest(control=pb.CONTROL_FLUSH)
    status, details, got = call(address, [config(), *[flush] * 300])
    finals = sum(r.WhichOneof("event") == "final" for r in got)
    ok = (status == grpc.StatusCode.OK and finals == 301) or busy(status, details)  # 300 flushes and the end
    return None if ok else f"flush flood: {status} {details} ({finals} finals)"


def empty_flood(address, rng):
    def requests():
        yield config()
        for _ in range(2000):
            yield pb.TranscribeRequest(audio=b"")
        time.sleep(10)  # empty messages do not keep the session alive: the idle timeout (3 s) ends it

    status, details, _ = call(address, requests())
    return None if status == grpc.StatusCode.DEADLINE_EXCEEDED or busy(status, details) else \
        f"empty flood: {status} {details}"


def never_reads(address, rng):
    """Pushes a minute of audio and never reads a response; gives up after 2 s (the server must free the slot)."""
    with grpc.insecure_channel(address) as channel:
        responses = pb_grpc.RealtimeStub(channel).Transcribe(iter([config(), *chunks(bytes(RATE * 2 * 60), 32000)]))
        time.sleep(2)
        responses.cancel()
    return None


def random_audio(address, rng):
    junk = rng.integers(0, 256, size=RATE * 4, dtype=np.uint8).tobytes()  # as F32LE: NaN, inf or huge values
    status, details, _ = call(address, [config(pb.AUDIO_ENCODING_F32LE), pb.TranscribeRequest(audio=junk)])
    return None if status == grpc.StatusCode.INVALID_ARGUMENT or busy(status, details) else \
        f"random audio: {status} {details}"


def undecodable_message(address, rng):
    """A request that is not a TranscribeRequest at all: gRPC itself refuses it."""
    with grpc.insecure_channel(address) as channel:
        raw = channel.stream_stream(TRANSCRIBE, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        try:
            list(raw(iter([rng.integers(0, 256, size=64, dtype=np.uint8).tobytes()]), timeout=10))
        except grpc.RpcError as e:
            return None if e.code() != grpc.StatusCode.OK else "undecodable: OK"
    return None  # random bytes can happen to parse as a TranscribeRequest; the server then answers as usual


def junk_on_the_port(address, rng):
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(rng.integers(0, 256, size=4096, dtype=np.uint8).tobytes())
        try:
            s.recv(1024)
        except OSError:
            pass
    return None


HOSTILE = [huge_values, flush_flood, empty_flood, never_reads, random_audio, undecodable_message, junk_on_the_port]


def test_clean_sessions_stay_correct_under_hostile_clients_with_flat_memory(bundle, tmp_path):
    server = ServerProcess(bundle, tmp_path, "--max-sessions", "4", "--idle-timeout", "3",
                           "--max-buffered-audio", "2")
    try:
        address, pid = server.address, server.proc.pid
        clips = [pcm16(2.0, seed=60 + i) for i in range(3)]
        reference = [text(call(address, [config(), *chunks(c)])[2]) for c in clips]
        assert all(reference)
        with ThreadPoolExecutor(max_workers=4) as pool:  # every slot's instance loaded before the baseline
            warm = list(pool.map(lambda i: call(address, [config(), *chunks(clips[i % 3])]), range(4)))
        assert all(status == grpc.StatusCode.OK for status, _, _ in warm)
        rss_start = rss_mib(pid)
        started, rounds, sessions, cases, failures = time.monotonic(), 0, 0, 0, []
        rng = np.random.default_rng(0)
        with ThreadPoolExecutor(max_workers=4) as pool:
            while time.monotonic() - started < SOAK_S:
                rounds += 1
                hostile = [pool.submit(case, address, rng) for case in HOSTILE[rounds % 2 :: 2]]
                clean = [pool.submit(call, address, [config(), *chunks(clips[i % 3])]) for i in range(3)]
                for i, future in enumerate(clean):  # at once beside the hostile ones
                    status, details, got = future.result()
                    sessions += 1
                    for _ in range(20):  # all slots busy with hostile clients: retry, as a client would
                        if status != grpc.StatusCode.RESOURCE_EXHAUSTED:
                            break
                        time.sleep(0.5)
                        status, details, got = call(address, [config(), *chunks(clips[i % 3])])
                    if status != grpc.StatusCode.OK or text(got) != reference[i % 3]:
                        failures.append(f"clean session {i}: {status} {details}")
                for future in hostile:
                    cases += 1
                    if (problem := future.result()) is not None:
                        failures.append(problem)
        for i in range(5):  # in a row, after everything
            sessions += 1
            status, _, got = call(address, [config(), *chunks(clips[i % 3])])
            if status != grpc.StatusCode.OK or text(got) != reference[i % 3]:
                failures.append(f"session {i} after the soak: {status}")
        time.sleep(1)
        rss_end = rss_mib(pid)
        print(f"\nsoak: {time.monotonic() - started:.0f} s, {rounds} rounds, {sessions} clean sessions, {cases} hostile "
              f"cases, {len(failures)} failures; server RSS {rss_start:.0f} -> {rss_end:.0f} MiB")
        assert not failures, failures
        assert rss_end - rss_start < 100, (rss_start, rss_end)
        assert server.proc.poll() is None
    finally:
        server.stop()


def live_sessions(address: str, n: int, seconds: float, results: list) -> list[threading.Thread]:
    """n sessions streaming `seconds` of audio at about twice real time, each appending (status, reason)."""
    def run(seed):
        data = pcm16(seconds, seed)

        def paced():
            yield config()
            for request in chunks(data, 3200):
                yield request
                time.sleep(0.05)

        status, _, got = call(address, paced())
        finals = [r.final.reason for r in got if r.WhichOneof("event") == "final"]
        results.append((status, finals[-1] if finals else None))

    threads = [threading.Thread(target=run, args=(70 + i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def test_sigterm_under_load_ends_every_session_with_its_reason(bundle, tmp_path):
    server = ServerProcess(bundle, tmp_path, "--max-sessions", "4", "--grace", "20")
    try:
        results: list = []
        threads = live_sessions(server.address, 4, 6.0, results)
        time.sleep(1.5)
        server.terminate()
        for t in threads:
            t.join(30)
        assert server.proc.wait(30) == 0
        assert len(results) == 4
        assert all(r == (grpc.StatusCode.UNAVAILABLE, pb.FINAL_REASON_SERVER_SHUTDOWN) for r in results), results
    finally:
        server.stop()


def test_sigkill_under_load_fails_every_session_promptly(bundle, tmp_path):
    server = ServerProcess(bundle, tmp_path, "--max-sessions", "4")
    try:
        results: list = []
        threads = live_sessions(server.address, 4, 6.0, results)
        time.sleep(1.5)
        killed = time.monotonic()
        server.proc.kill()
        for t in threads:
            t.join(30)
        assert time.monotonic() - killed < 10
        assert len(results) == 4 and all(status == grpc.StatusCode.UNAVAILABLE for status, _ in results), results
    finally:
        server.stop()
