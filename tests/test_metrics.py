"""The metrics' session meter without a server: lag is audio received minus audio processed, the step histogram
counts each step a model call ran, and a session's series go when it ends."""

from __future__ import annotations

from voxtral_runtime.metrics import Metrics


class FakeSession:
    """Stands in for a session in the meter's unit test: audio processed and steps run are set by the test."""

    audio_processed_s = 0.0
    steps_computed = 0


def test_lag_follows_audio_received_against_audio_processed():
    metrics = Metrics(0.08, lambda: 1, max_sessions=4)
    session = FakeSession()
    meter = metrics.session("grpc", "abc", session)
    meter.set_received(2.0)
    assert metrics.registry.get_sample_value("voxtral_session_lag_seconds", {"session": "abc"}) == 2.0
    assert metrics.registry.get_sample_value("voxtral_lag_max_seconds") == 2.0

    def model_call():
        session.audio_processed_s, session.steps_computed = 1.5, 19
        return []

    meter.run(model_call)
    assert metrics.registry.get_sample_value("voxtral_session_lag_seconds", {"session": "abc"}) == 0.5
    assert metrics.registry.get_sample_value("voxtral_step_seconds_count") == 19
    meter.end("OK")
    assert metrics.registry.get_sample_value("voxtral_session_lag_seconds", {"session": "abc"}) is None
    assert metrics.registry.get_sample_value("voxtral_lag_max_seconds") == 0.0
    assert metrics.registry.get_sample_value("voxtral_sessions_total", {"transport": "grpc", "code": "OK"}) == 1


def test_audio_skipped_by_endpointing_is_counted():
    metrics = Metrics(0.08, lambda: 1, max_sessions=4)
    session = FakeSession()
    session.rate, session.skipped_samples = 16000, 0
    meter = metrics.session("websocket", "e", session)

    def model_call():
        session.audio_processed_s, session.steps_computed, session.skipped_samples = 3.0, 10, 32000
        return []

    meter.run(model_call)
    assert metrics.registry.get_sample_value("voxtral_audio_skipped_seconds_total") == 2.0
    assert metrics.registry.get_sample_value("voxtral_audio_processed_seconds_total") == 3.0
