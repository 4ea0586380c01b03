"""`voxtral-runtime transcribe`: files, simulated streams and stdin microphone audio, locally."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import numpy as np
from voxtral_client.subtitles import FORMATS, Transcript, format_for

from .audio import AudioError, load_audio
from .endpointing import EndpointingOptions, EndpointingSession
from .engine import Engine
from .bundle import BundlePaths, ProgramError
from .session import SegmentEnd, SessionError, TextPiece

MIC_CHUNK_MS = 80
PROGRESS_EVERY_S = 2.0


class Printer:
    """Prints text as it is decoded, or one JSON object per event (or nothing, `live=False`); keeps the timed
    transcript for --output."""

    def __init__(self, as_json: bool, out=sys.stdout, live: bool = True):
        self.as_json, self.out, self.live = as_json, out, live
        self.text: list[str] = []
        self.transcript = Transcript()

    def __call__(self, events: list) -> None:
        for event in events:
            if isinstance(event, TextPiece):
                self.transcript.add_text(event.text, event.start_s, event.end_s)
            elif isinstance(event, SegmentEnd):
                self.transcript.end_segment()
            if self.live:
                self._print(event)

    def _print(self, event) -> None:
        if isinstance(event, TextPiece):
            self.text.append(event.text)
            if self.as_json:
                self._json({"type": "text", "text": event.text, "start_s": round(event.start_s, 3),
                            "end_s": round(event.end_s, 3), "step": event.step, "token_ids": event.token_ids})
            else:
                self.out.write(event.text)
        elif isinstance(event, SegmentEnd):
            if self.as_json:
                self._json({"type": "final", "reason": event.reason, "text": event.text,
                            "start_s": round(event.start_s, 3), "end_s": round(event.end_s, 3)})
            elif event.text:
                self.out.write("\n")
        self.out.flush()

    def _json(self, obj: dict) -> None:
        self.out.write(json.dumps(obj, ensure_ascii=False) + "\n")


def _progress(session, total_s: float, started: float, last: list[float]) -> None:
    now = time.monotonic()
    if now - last[0] >= PROGRESS_EVERY_S:
        last[0] = now
        done = session.audio_processed_s
        print(f"[{done:7.1f} / {total_s:.1f} s audio, {now - started:.1f} s elapsed]", file=sys.stderr, flush=True)


def transcribe_file(engine: Engine, audio_path: Path, printer: Printer, streaming: bool, chunk_ms: float,
                    **session_options) -> None:
    audio = load_audio(audio_path, engine.spec.meta.sample_rate)
    session = engine.session(streaming=streaming, **session_options)
    rate = engine.spec.meta.sample_rate
    chunk = max(1, int(rate * chunk_ms / 1000)) if streaming else max(len(audio), 1)
    started, last = time.monotonic(), [time.monotonic()]
    total_s = len(audio) / rate
    for start in range(0, len(audio), chunk):
        printer(session.feed(audio[start : start + chunk]))
        _progress(session, total_s, started, last)
    printer(session.finish())
    elapsed = time.monotonic() - started
    print(f"[{total_s:.1f} s of audio in {elapsed:.1f} s, real-time factor {elapsed / max(total_s, 1e-9):.2f}]",
          file=sys.stderr)
    if isinstance(session, EndpointingSession):
        audio_steps = len(audio) // engine.spec.meta.step_samples
        print(f"[endpointing: the model ran {session.steps_computed} decoder steps for {audio_steps} steps of audio; "
              f"{session.skipped_samples / rate:.1f} s of audio without speech skipped]", file=sys.stderr)


def transcribe_stdin(engine: Engine, printer: Printer, chunk_ms: float, stdin=None, **session_options) -> None:
    """Raw float32 mono samples at the model's rate on stdin (e.g. from ffmpeg); Ctrl+C or EOF ends."""
    stdin = stdin or sys.stdin.buffer
    session = engine.session(streaming=True, **session_options)
    session.prepare()
    meta = engine.spec.meta
    chunk_bytes = 4 * max(1, int(meta.sample_rate * chunk_ms / 1000))
    # read1 returns what has arrived, up to this: audio that piled up while the model was behind is fed at once, so
    # the session encodes it several steps per encoder call.
    catch_up_bytes = max(chunk_bytes, 4 * meta.step_samples * max(meta.max_encoder_steps, 1))
    interrupted = []
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    try:
        pending = b""
        while not interrupted:
            data = stdin.read1(catch_up_bytes) if hasattr(stdin, "read1") else stdin.read(chunk_bytes)
            if not data:
                break
            data = pending + data
            usable = len(data) - len(data) % 4
            pending = data[usable:]
            if usable:
                samples = np.frombuffer(data[:usable], dtype="<f4")
                printer(session.feed(samples))
        if interrupted:
            printer(session.flush())
        printer(session.finish())
    finally:
        signal.signal(signal.SIGINT, previous)


def add_arguments(p) -> None:
    p.add_argument("bundle", nargs="?", help="bundle directory from voxtral-export (model.pte, preprocessor.pte, "
                                             "tekken.json); explicit paths below override its files")
    p.add_argument("--model_path", "--model-path", help="model.pte")
    p.add_argument("--tokenizer_path", "--tokenizer-path", help="tekken.json")
    p.add_argument("--preprocessor_path", "--preprocessor-path", help="preprocessor.pte")
    p.add_argument("--audio_path", "--audio-path", type=Path, help="WAV file (any sample rate and channel count)")
    p.add_argument("--mic", action="store_true",
                   help="read raw float32 mono samples at 16 kHz from stdin, e.g. "
                        "'ffmpeg -f pulse -i default -ac 1 -ar 16000 -f f32le -' ; Ctrl+C flushes and ends")
    p.add_argument("--streaming", action="store_true",
                   help="feed the file in --chunk-ms chunks through the streaming session (needs a streaming "
                        "program); without it the whole file is transcribed at once")
    p.add_argument("--chunk-ms", type=float, default=MIC_CHUNK_MS, help="chunk size for --streaming and --mic")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed when --temperature > 0")
    p.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=None,
                   help="stop after this many sampled tokens")
    p.add_argument("--endpointing", type=int, default=None, metavar="MS",
                   help="end a segment after MS ms without speech (voice activity detection, 100-10000; e.g. 500) "
                        "and do not run the model while there is none (streaming programs; default: off)")
    p.add_argument("--token-ids", action="store_true", help="with --json: include token ids (and control tokens)")
    p.add_argument("--json", action="store_true", help="one JSON object per event (text with timestamps, finals)")
    p.add_argument("--output", type=Path, help="also write the transcript to this file at the end, in --output-format")
    p.add_argument("--output-format", choices=FORMATS, default=None,
                   help="text (a line per segment), json (text and timed segments), srt or vtt (subtitles: cues at "
                        "segment ends and pauses); default: from --output's extension, else text. Without --output, "
                        "json/srt/vtt go to stdout at the end instead of the live text")


def run(args) -> int:
    if bool(args.audio_path) == bool(args.mic):
        print("voxtral-runtime transcribe: error: pass exactly one of --audio_path or --mic", file=sys.stderr)
        return 2
    fmt = args.output_format or (format_for(args.output) if args.output else "text")
    document_on_stdout = fmt != "text" and not args.output
    if document_on_stdout and args.json:
        print(f"voxtral-runtime transcribe: error: --json and --output-format {fmt} both want stdout; write the "
              "file with --output", file=sys.stderr)
        return 2
    try:
        # Options are checked before the model loads, so a wrong value is refused at once.
        endpointing = None if args.endpointing is None else EndpointingOptions(silence_ms=args.endpointing)
        paths = BundlePaths.resolve(args.bundle, args.model_path, args.preprocessor_path, args.tokenizer_path)
        engine = Engine(paths)
        printer = Printer(args.json, live=not document_on_stdout)
        options = dict(temperature=args.temperature, seed=args.seed, max_new_tokens=args.max_new_tokens,
                       token_ids=args.token_ids, endpointing=endpointing)
        if args.mic:
            transcribe_stdin(engine, printer, args.chunk_ms, **options)
        else:
            transcribe_file(engine, args.audio_path, printer, args.streaming, args.chunk_ms, **options)
    except (ProgramError, AudioError, SessionError, ValueError) as e:
        print(f"voxtral-runtime transcribe: error: {e}", file=sys.stderr)
        return 2
    if document_on_stdout:
        sys.stdout.write(printer.transcript.render(fmt))
    elif args.output:
        try:
            printer.transcript.write(args.output, fmt)
        except OSError as e:
            print(f"voxtral-runtime transcribe: error: cannot write {args.output}: {e.strerror or e}", file=sys.stderr)
            return 1
    return 0
