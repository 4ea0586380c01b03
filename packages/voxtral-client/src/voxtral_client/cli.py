"""voxtral-client: stream a microphone or a WAV file to a Voxtral Realtime server and print the text live.

    voxtral-client --mic                         # speak; Ctrl+C flushes, prints the last words and exits 0
    voxtral-client --file speech.wav --json      # one JSON object per event
    voxtral-client --file talk.wav --output talk.srt   # live text, and subtitles at the end (also .vtt, .json, .txt)
    voxtral-client --describe --server host:50051 --tls --token "$TOKEN"

Exit codes: 0 success (also after Ctrl+C), 1 error (server status, connection, audio, microphone), 2 bad arguments,
130 a second Ctrl+C (abort without waiting for the final text).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TextIO

from .audio import (
    DEFAULT_CHUNK_MS,
    NO_DEVICE_MESSAGE,
    AudioError,
    Microphone,
    MicrophoneError,
    file_chunks,
    input_devices,
    read_wav,
)
from .client import DEFAULT_SERVER, FLUSH, Endpointing, Event, RealtimeClient, RealtimeError
from .subtitles import FORMATS, Transcript, format_for


class ClientError(Exception):
    """A local problem (not the server's) worth a one-line message."""


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="voxtral-client",
        description="Stream a microphone or a WAV file to a Voxtral Realtime server and print the text live.",
        epilog="Ctrl+C flushes the session, prints the final text and exits 0; a second Ctrl+C aborts.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--mic", action="store_true", help="stream the microphone (16 kHz mono)")
    what.add_argument("--file", metavar="WAV", help="stream a WAV file at its own sample rate, paced at real time")
    what.add_argument("--describe", action="store_true", help="print the served model's description and exit")
    what.add_argument("--list-devices", action="store_true", help="list audio input devices and exit")

    conn = p.add_argument_group("connection")
    conn.add_argument("--server", default=os.environ.get("VOXTRAL_SERVER", DEFAULT_SERVER), metavar="HOST:PORT",
                      help="server address, or several replicas as HOST:PORT,HOST:PORT (sessions go round-robin "
                           "to those serving; one that is full or stopping is skipped); default: $VOXTRAL_SERVER "
                           "or %(default)s")
    conn.add_argument("--tls", action="store_true", help="connect with TLS (system root certificates by default)")
    conn.add_argument("--ca-cert", metavar="PEM", help="CA certificate to verify the server with (needs --tls)")
    conn.add_argument("--token", default=os.environ.get("VOXTRAL_TOKEN"),
                      help="bearer token, sent as `authorization: Bearer <token>` (default: $VOXTRAL_TOKEN)")
    conn.add_argument("--connect-timeout", type=_positive_float, default=10.0, metavar="S",
                      help="seconds to wait for the connection (default: %(default)s)")

    audio = p.add_argument_group("audio")
    audio.add_argument("--device", metavar="ID",
                       help="microphone: index or part of the name (see --list-devices; default: system default)")
    audio.add_argument("--chunk-ms", type=_positive_float, default=float(DEFAULT_CHUNK_MS), metavar="MS",
                       help="audio per message in milliseconds (default: %(default)g)")
    audio.add_argument("--fast", action="store_true", help="--file: send as fast as the server takes it")

    out = p.add_argument_group("transcription and output")
    out.add_argument("--json", action="store_true", help="print one JSON object per event instead of live text")
    out.add_argument("--token-ids", action="store_true", help="include token ids in the JSON events (needs --json)")
    out.add_argument("--offline", action="store_true",
                     help="transcribe in one pass at each flush and at the end instead of streaming")
    out.add_argument("--temperature", type=_non_negative_float, default=0.0,
                     help="sampling temperature; 0 is greedy (default: %(default)g)")
    out.add_argument("--seed", type=_non_negative_int, default=None, help="sampling seed (with --temperature > 0)")
    out.add_argument("--max-new-tokens", type=_non_negative_int, default=0, metavar="N",
                     help="stop after N sampled tokens; 0: no limit (default)")
    out.add_argument("--endpointing", type=_non_negative_int, default=None, metavar="MS",
                     help="server-side endpointing: end a segment after MS ms without speech (100-10000; e.g. 500), "
                          "and let the model rest while there is none (streaming only; default: off)")
    out.add_argument("--output", metavar="FILE",
                     help="also write the transcript to FILE when the session ends (or is cut), in --output-format")
    out.add_argument("--output-format", choices=FORMATS, default=None,
                     help="text (a line per segment), json (text and timed segments), srt or vtt (subtitles: cues "
                          "at segment ends and pauses); default: from --output's extension, else text. Without "
                          "--output, json/srt/vtt go to stdout at the end instead of the live text")
    return p


def output_format(args: argparse.Namespace) -> str:
    return args.output_format or (format_for(args.output) if args.output else "text")


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for server in args.server.split(","):
        port = server.rpartition(":")[2]
        if port.isdigit() and not 0 < int(port) < 65536:  # gRPC would silently take the port modulo 65536
            parser.error(f"--server {server}: the port must be 1..65535")
    if args.ca_cert and not args.tls:
        parser.error("--ca-cert needs --tls")
    if args.fast and not args.file:
        parser.error("--fast applies to --file only")
    if args.device is not None and not args.mic:
        parser.error("--device applies to --mic only")
    if args.token_ids and not args.json:
        parser.error("--token-ids needs --json")
    if args.endpointing is not None and args.offline:
        parser.error("--endpointing applies to streaming sessions, not --offline")
    if args.json and not args.output and output_format(args) != "text":
        parser.error(f"--json and --output-format {args.output_format} both want stdout; write the file with --output")
    streaming_only = {"--offline": args.offline, "--temperature": args.temperature != 0.0,
                      "--seed": args.seed is not None, "--max-new-tokens": args.max_new_tokens != 0,
                      "--endpointing": args.endpointing is not None, "--output": args.output is not None,
                      "--output-format": args.output_format is not None}
    if not (args.mic or args.file):
        used = [flag for flag, on in streaming_only.items() if on]
        if used:
            parser.error(f"{', '.join(used)} applies to --mic or --file only")


# --------------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------------


def format_event(event: Event, token_ids: bool = False) -> str:
    """One JSON line for --json."""
    return json.dumps(event.to_dict(token_ids=token_ids), ensure_ascii=False)


class Printer:
    """Live text (deltas as they arrive, a line per segment) or JSON lines."""

    def __init__(self, out: TextIO, as_json: bool = False, token_ids: bool = False):
        self.out, self.as_json, self.token_ids = out, as_json, token_ids
        self.at_line_start = True

    def __call__(self, event: Event) -> None:
        if self.as_json:
            self.out.write(format_event(event, self.token_ids) + "\n")
        elif event.kind == "delta" and event.text:
            text = event.text.lstrip() if self.at_line_start else event.text
            if text:
                self.out.write(text)
                self.at_line_start = False
        elif event.kind == "final":
            self.end_line()
        self.out.flush()

    def end_line(self) -> None:
        if not self.at_line_start:
            self.out.write("\n")
            self.out.flush()
            self.at_line_start = True


def _describe_lines(message, prefix: str = "") -> Iterator[str]:
    """`name: value` lines of a message, enums by short name, sub-messages as dotted names."""
    for f in message.DESCRIPTOR.fields:
        value = getattr(message, f.name)
        name = prefix + f.name
        if f.message_type is not None and not f.is_repeated:
            yield from _describe_lines(value, name + ".")
            continue
        if f.enum_type is not None:
            short = _enum_prefix(f.enum_type)
            values = value if f.is_repeated else [value]
            text = ", ".join(f.enum_type.values_by_number[v].name.removeprefix(short).lower()
                             if v in f.enum_type.values_by_number else str(v) for v in values)
        elif f.is_repeated:
            text = ", ".join(str(v) for v in value)
        elif isinstance(value, float):
            text = f"{value:g}"
        else:
            text = str(value)
        yield f"{name}: {text}"


def _enum_prefix(enum_type) -> str:
    # AUDIO_ENCODING_PCM16LE -> pcm16le: the prefix is the UNSPECIFIED value's name without UNSPECIFIED.
    zero = enum_type.values_by_number.get(0)
    return zero.name.removesuffix("UNSPECIFIED") if zero is not None and zero.name.endswith("UNSPECIFIED") else ""


# --------------------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> RealtimeClient:
    try:
        return RealtimeClient(args.server, tls=args.tls, ca_cert=args.ca_cert, token=args.token)
    except ValueError as e:  # an address that is not host:port or does not resolve
        raise ClientError(f"--server: {e}") from e
    except OSError as e:
        raise ClientError(f"cannot read CA certificate {args.ca_cert}: {e.strerror or e}") from e


def _list_devices(out: TextIO) -> int:
    devices = input_devices()
    if not devices:
        raise MicrophoneError(NO_DEVICE_MESSAGE)
    for d in devices:
        mark = "*" if d.is_default else " "
        out.write(f"{mark} {d.index:3d}  {d.name}  ({d.hostapi}, {d.channels} ch, {d.default_sample_rate:g} Hz)\n")
    return 0


def _describe(args: argparse.Namespace, out: TextIO) -> int:
    with _client(args) as client:
        client.wait_ready(args.connect_timeout)
        description = client.describe(timeout=max(args.connect_timeout, 10.0))
    if args.json:
        from google.protobuf import json_format

        d = json_format.MessageToDict(description, preserving_proto_field_name=True,
                                      always_print_fields_with_no_presence=True)
        out.write(json.dumps(d, indent=2, ensure_ascii=False) + "\n")
    else:
        out.write("\n".join(_describe_lines(description)) + "\n")
    return 0


@contextlib.contextmanager
def _sigint_flushes(stop: threading.Event, on_stop):
    """First SIGINT sets `stop` (the audio ends with a flush); a second one raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        on_stop()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _transcribe(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    stop = threading.Event()
    mic = None
    if args.file:
        try:
            wav = read_wav(args.file)
        except OSError as e:
            raise AudioError(f"cannot read {args.file}: {e.strerror or e}") from e
        sample_rate, encoding = wav.sample_rate, wav.encoding
        source = file_chunks(wav, args.chunk_ms, realtime=not args.fast, stop=stop)
    else:
        mic = Microphone(args.device, args.chunk_ms)  # fails here, before connecting, when there is no microphone
        sample_rate, encoding = mic.sample_rate, mic.encoding
        source = mic.chunks(stop)

    def audio():
        yield from source
        if stop.is_set():  # Ctrl+C: flush, then the end of the iterable half-closes the stream
            yield FLUSH

    fmt = output_format(args)
    document_on_stdout = fmt != "text" and not args.output
    printer = Printer(out, as_json=args.json, token_ids=args.token_ids)
    transcript = Transcript()

    def on_event(event: Event) -> None:
        if event.kind == "delta":
            transcript.add_text(event.text, event.start_s, event.end_s)
        elif event.kind == "final":
            transcript.end_segment()
        if not document_on_stdout:
            printer(event)

    def on_stop():
        if err.isatty():
            printer.end_line()
            err.write("[stopping: flushing the last words; Ctrl+C again to abort]\n")
            err.flush()

    try:
        with _client(args) as client:
            client.wait_ready(args.connect_timeout)
            if mic is not None and err.isatty():
                err.write(f"[listening on {mic.device.name} at {sample_rate} Hz; Ctrl+C to stop]\n")
                err.flush()
            with _sigint_flushes(stop, on_stop):
                try:
                    events = client.transcribe(
                        audio(), sample_rate, encoding, token_ids=args.token_ids, offline=args.offline,
                        temperature=args.temperature, seed=args.seed, max_new_tokens=args.max_new_tokens,
                        endpointing=None if args.endpointing is None else Endpointing(silence_ms=args.endpointing),
                    )
                    for event in events:
                        on_event(event)
                except KeyboardInterrupt:
                    printer.end_line()
                    err.write("error: CANCELLED: interrupted\n")
                    return 130
                finally:  # a session cut by an error still leaves what it transcribed
                    _write_transcript(transcript, fmt, args.output, out if document_on_stdout else None)
    finally:
        stop.set()
        if mic is not None:
            mic.close()
            if mic.overflows:
                err.write(f"warning: the microphone dropped audio {mic.overflows} times (input overflow)\n")
    printer.end_line()
    return 0


def _write_transcript(transcript: Transcript, fmt: str, path: str | None, stdout: TextIO | None) -> None:
    if stdout is not None:
        stdout.write(transcript.render(fmt))
        stdout.flush()
    elif path:
        try:
            transcript.write(path, fmt)
        except OSError as e:
            raise ClientError(f"cannot write {path}: {e.strerror or e}") from e


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    out, err = sys.stdout, sys.stderr
    try:
        if args.list_devices:
            return _list_devices(out)
        if args.describe:
            return _describe(args, out)
        return _transcribe(args, out, err)
    except RealtimeError as e:
        err.write(f"error: {e.code.name}: {e.message}\n")
    except (AudioError, MicrophoneError, ClientError) as e:
        err.write(f"error: {e}\n")
    except KeyboardInterrupt:  # Ctrl+C before streaming started (connecting, opening the microphone)
        err.write("error: CANCELLED: interrupted\n")
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
