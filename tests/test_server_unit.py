"""Server pieces that need no model: the plaintext-token warning, limits, a port in use, the one-line log for
unparsable requests."""

from __future__ import annotations

import argparse
import logging
import socket

from voxtral_runtime import serve, server


def serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_a_token_over_plaintext_off_loopback_is_warned_about(caplog, tmp_path, capsys):
    missing = str(tmp_path / "no-bundle")
    with caplog.at_level(logging.WARNING, logger="voxtral_runtime.server"):
        assert serve.run(serve_args(missing, "--host", "0.0.0.0", "--token", "s3cret")) == 2
    assert "plaintext" in caplog.text and "--tls-cert" in caplog.text
    assert "bundle directory not found" in capsys.readouterr().err
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="voxtral_runtime.server"):
        assert serve.run(serve_args(missing, "--token", "s3cret")) == 2  # loopback: no warning
    assert "plaintext" not in caplog.text


def test_limits_out_of_range_are_refused(tmp_path, capsys):
    assert serve.run(serve_args(str(tmp_path), "--max-flushes", "0")) == 2
    assert "--max-flushes must be at least 1" in capsys.readouterr().err
    assert serve.run(serve_args(str(tmp_path), "--max-session-audio", "inf")) == 2
    assert "--max-session-audio must be a positive number of seconds" in capsys.readouterr().err


def test_a_port_in_use_is_refused_with_what_to_do(tmp_path, capsys):
    """The server binds before it loads the model, so files that are no programs never get read."""
    for name in ("model.pte", "preprocessor.pte", "tekken.json"):
        (tmp_path / name).write_bytes(b"")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve.run(serve_args(str(tmp_path), "--port", str(port))) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_an_unparsable_request_is_logged_in_one_line():
    try:
        raise ValueError("Error parsing message")
    except ValueError:
        import sys

        record = logging.LogRecord("grpc._common", logging.ERROR, __file__, 1, "Exception deserializing message!", (),
                                   sys.exc_info())
    assert server.PARSE_ERRORS.filter(record)
    assert record.exc_info is None and record.levelname == "WARNING" and "bad bytes" in record.getMessage()
