"""Prometheus metrics of `voxtral-runtime serve` (`--metrics-port`): whether the device keeps up, and its load.

One registry per server (tests run several servers in one process). Both transports, gRPC and the websocket, report
each session through a SessionMeter: it times every model call against the audio steps the call ran, so the step
histogram reads directly against the 80 ms budget, and it keeps the session's lag (audio received minus audio
processed) current. docs/runtime.md ("Metrics") lists every series.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server

# Seconds of model time per 80 ms audio step: the budget sits in the middle of the buckets.
STEP_BUCKETS = (0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.16, 0.24, 0.32, 0.64, 1.28)
FIRST_TEXT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, step_seconds: float, instances_loaded: Callable[[], int], max_sessions: int):
        """`step_seconds`: the audio one model step covers (0.08); `instances_loaded`: how many program instances
        the engine holds now (idle and in use)."""
        self.step_s = step_seconds
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        self.active = Gauge("voxtral_sessions_active", "Sessions holding a program instance now.", ["transport"],
                            registry=registry)
        self.ended = Counter("voxtral_sessions", "Sessions ended, by transport and status code (gRPC status name, "
                             "or the websocket's error code; OK for a normal end).", ["transport", "code"],
                             registry=registry)
        self.steps = Histogram("voxtral_step_seconds", "Model time per 80 ms audio step (a call running several "
                               "queued steps counts each at the call's mean).", buckets=STEP_BUCKETS,
                               registry=registry)
        self.first_text = Histogram("voxtral_time_to_first_text_seconds", "From a session's start to its first "
                                    "text.", buckets=FIRST_TEXT_BUCKETS, registry=registry)
        self.audio = Counter("voxtral_audio_processed_seconds", "Seconds of client audio the model has processed "
                             "(audio endpointing skipped included).", registry=registry)
        self.skipped = Counter("voxtral_audio_skipped_seconds", "Seconds of client audio endpointing kept from the "
                               "model (no speech in it).", registry=registry)
        self.lag = Gauge("voxtral_session_lag_seconds", "Audio a session has received but not processed yet.",
                         ["session"], registry=registry)
        Gauge("voxtral_lag_max_seconds", "The largest lag among active sessions.",
              registry=registry).set_function(self._max_lag)
        Gauge("voxtral_instances_loaded", "Program instances loaded (idle and in use).",
              registry=registry).set_function(instances_loaded)
        Gauge("voxtral_sessions_limit", "Sessions the server admits at once (--max-sessions).",
              registry=registry).set(max_sessions)
        self._meters: set[SessionMeter] = set()
        self._lock = threading.Lock()
        self._http = None

    def _max_lag(self) -> float:
        with self._lock:
            return max((m.lag_s for m in self._meters), default=0.0)

    def session(self, transport: str, session_id: str, session) -> SessionMeter:
        meter = SessionMeter(self, transport, session_id, session)
        with self._lock:
            self._meters.add(meter)
        self.active.labels(transport).inc()
        return meter

    def _ended(self, meter: SessionMeter, code: str) -> None:
        with self._lock:
            self._meters.discard(meter)
        self.active.labels(meter.transport).dec()
        self.ended.labels(meter.transport, code).inc()
        self.lag.remove(meter.session_id)

    def serve(self, host: str, port: int) -> int:
        """Serves the registry over HTTP (any path; Prometheus scrapes /metrics); returns the bound port."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def close(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            http.shutdown()
            http.server_close()


class SessionMeter:
    """One session's figures. `run(call, ...)` wraps every model call (prepare, feed, flush, finish)."""

    def __init__(self, metrics: Metrics, transport: str, session_id: str, session):
        self.metrics, self.transport, self.session_id, self.session = metrics, transport, session_id, session
        self.started = time.monotonic()
        self.received_s = 0.0
        self.lag_s = 0.0
        self.saw_text = False
        self.done = False
        metrics.lag.labels(session_id).set(0.0)

    def set_received(self, seconds: float) -> None:
        """Client audio the transport has taken from the client so far (some of it still waiting for the model)."""
        self.received_s = seconds
        self._update_lag()

    def run(self, call: Callable[..., list], *args) -> list:
        """Runs a model call; records its time per step, the audio it processed and the first text."""
        steps, processed = self.session.steps_computed, self.session.audio_processed_s
        skipped = getattr(self.session, "skipped_samples", 0)  # an endpointing session's
        started = time.perf_counter()
        events = call(*args) or []  # prepare returns nothing
        elapsed = time.perf_counter() - started
        ran = self.session.steps_computed - steps
        for _ in range(ran):
            self.metrics.steps.observe(elapsed / ran)
        self.metrics.audio.inc(max(self.session.audio_processed_s - processed, 0.0))
        if skipped != getattr(self.session, "skipped_samples", 0):
            self.metrics.skipped.inc((self.session.skipped_samples - skipped) / self.session.rate)
        if not self.saw_text and any(getattr(e, "text", "") for e in events):
            self.saw_text = True
            self.metrics.first_text.observe(time.monotonic() - self.started)
        self._update_lag()
        return events

    def _update_lag(self) -> None:
        self.lag_s = max(self.received_s - self.session.audio_processed_s, 0.0)
        if not self.done:
            self.metrics.lag.labels(self.session_id).set(self.lag_s)

    def end(self, code: str) -> None:
        if not self.done:
            self.done = True
            self.metrics._ended(self, code)
