"""Several replicas behind one client: three servers on loopback; sessions spread round-robin over them; a replica at
its session limit or stopped is skipped (gRPC retries the refused admission on the next one) and every session is
still served, with the same text."""

from __future__ import annotations

import threading
import time

import pytest

from servers import start_in_process
from signals import pcm16
from voxtral_client.client import RealtimeClient, channel_target, split_servers

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def servers(bundles):
    bundle = bundles("xnnpack-stream")
    started = [start_in_process(bundle, max_sessions=1) for _ in range(3)]
    yield started
    for server in started:
        server.stop(0)


def served(server) -> float:
    return server.metrics.registry.get_sample_value("voxtral_sessions_total",
                                                    {"transport": "grpc", "code": "OK"}) or 0.0


def text_of(client: RealtimeClient, audio: bytes) -> str:
    return "".join(e.text for e in client.transcribe([audio], 16000) if e.kind == "delta")


def test_addresses_become_one_target():
    assert split_servers(" a:1, b:2 ,") == ["a:1", "b:2"]
    assert channel_target(["localhost:5"]) == "localhost:5"
    assert channel_target(["127.0.0.1:5", "127.0.0.2:6"]) == "ipv4:127.0.0.1:5,127.0.0.2:6"
    with pytest.raises(ValueError, match="not host:port"):
        channel_target(["a", "b:1"])


def test_sessions_spread_and_skip_full_and_stopped_replicas(servers):
    audio = pcm16(0.5, seed=80)
    with RealtimeClient(f"127.0.0.1:{servers[0].port}") as one:
        expected = text_of(one, audio)
    addresses = [f"127.0.0.1:{s.port}" for s in servers]
    with RealtimeClient(addresses) as client:
        client.wait_ready(10)
        time.sleep(1.0)  # every replica's health check answered
        before = [served(s) for s in servers]
        assert [text_of(client, audio) for _ in range(6)] == [expected] * 6
        assert all(served(s) > b for s, b in zip(servers, before)), "a replica got no session"

        # Replica 0 at its limit (one session held open): every new session goes to the others.
        gate = threading.Event()
        holder = RealtimeClient(addresses[0])

        def held():
            yield b"\x00\x00" * 160
            gate.wait(30)

        held_events = holder.transcribe(held(), 16000)
        assert next(held_events).kind == "started"
        full_before = served(servers[0])
        assert [text_of(client, audio) for _ in range(4)] == [expected] * 4
        assert served(servers[0]) == full_before
        gate.set()
        list(held_events)
        holder.close()

        # Replica 1 stopped: the others serve.
        servers[1].stop(0)
        assert [text_of(client, audio) for _ in range(4)] == [expected] * 4
