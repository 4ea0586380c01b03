"""What endpointing saves on a long recording with pauses, and what it does to the text, against endpointing off.

    uv run benchmarks/endpointing.py BUNDLE [--audio FILE] [--silence-ms 500] [--runs 2]

Without --audio, speech is synthesized with espeak-ng (apt-get install espeak-ng): PHRASES spoken one after the
other, separated by the pauses of PAUSES_S (about a minute in all, a third of it pauses, as in a dictation or a
meeting). The file is fed 80 ms at a time through a streaming session without and with endpointing, alternately
(--runs times each); printed: model time (the session's feed and finish calls, detector included), decoder steps
run against the steps of audio, audio skipped, how similar the two texts are (difflib's ratio over words: 1.0 is
the same text), and how idle the machine was while each ran (other work on it shows as less idle time).
"""

from __future__ import annotations

import argparse
import difflib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import voxtral_runtime  # noqa: F401  first: one OpenMP thread, as the runtime runs

import numpy as np  # noqa: E402

from step_time import MachineLoad  # noqa: E402  the machine's idle share while a block runs

RATE = 16000
PHRASES = ["good morning everyone and welcome to the weekly meeting", "first the numbers from last month",
           "sales went up by about four percent", "the new model ships on the twelfth",
           "any questions so far", "then let us move on to the roadmap",
           "we plan two releases before the summer", "the first one fixes the search page",
           "the second one adds offline mode", "thank you all and see you next week"]
PAUSES_S = [1.0, 3.0, 0.6, 5.0, 2.0, 1.5, 4.0, 0.8, 3.0, 2.0]


def synthesized() -> np.ndarray:
    from voxtral_runtime.audio import load_audio

    if shutil.which("espeak-ng") is None:
        raise SystemExit("error: espeak-ng is not installed (apt-get install espeak-ng), or pass --audio FILE")
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (phrase, pause) in enumerate(zip(PHRASES, PAUSES_S)):
            path = Path(tmp) / f"{i}.wav"
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), phrase], check=True)
            parts += [load_audio(path, RATE), np.zeros(int(pause * RATE), np.float32)]
    return np.concatenate(parts)


def run_once(engine, audio: np.ndarray, endpointing) -> tuple[float, object, str]:
    from voxtral_runtime.session import TextPiece

    session = engine.session(endpointing=endpointing)
    session.prepare()  # before the audio, as a live session does: not counted
    step = engine.spec.meta.step_samples
    events, model_s = [], 0.0
    for start in range(0, len(audio), step):
        began = time.perf_counter()
        events += session.feed(audio[start : start + step])
        model_s += time.perf_counter() - began
    began = time.perf_counter()
    events += session.finish()
    model_s += time.perf_counter() - began
    return model_s, session, "".join(e.text for e in events if isinstance(e, TextPiece))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path)
    p.add_argument("--audio", type=Path, help="a recording with pauses (default: synthesized with espeak-ng)")
    p.add_argument("--silence-ms", type=int, default=500, help="pause that ends a segment (default: %(default)s)")
    p.add_argument("--runs", type=int, default=2, help="runs of each, alternating (default: %(default)s)")
    args = p.parse_args()

    from voxtral_runtime.audio import load_audio
    from voxtral_runtime.endpointing import EndpointingOptions
    from voxtral_runtime.bundle import BundlePaths
    from voxtral_runtime.engine import Engine

    audio = load_audio(args.audio, RATE) if args.audio else synthesized()
    engine = Engine(BundlePaths.resolve(args.bundle))
    options = EndpointingOptions(silence_ms=args.silence_ms)
    seconds = len(audio) / RATE
    audio_steps = len(audio) // engine.spec.meta.step_samples
    print(f"{seconds:.1f} s of audio ({audio_steps} steps); endpointing after {args.silence_ms} ms", file=sys.stderr)
    times: dict[str, list[float]] = {"off": [], "on": []}
    texts, steps, skipped = {}, {}, {}
    idle: dict[str, list[float]] = {"off": [], "on": []}
    for run in range(args.runs):
        for name, endpointing in (("off", None), ("on", options)):
            with MachineLoad() as load:
                model_s, session, text = run_once(engine, audio, endpointing)
            idle[name].append(load.idle)
            times[name].append(model_s)
            texts[name], steps[name] = text, session.steps_computed  # the same in every run (greedy)
            skipped[name] = getattr(session, "skipped_samples", 0) / RATE
            print(f"run {run + 1} endpointing {name}: {model_s:.1f} s of model time, {steps[name]} decoder steps, "
                  f"{skipped[name]:.1f} s skipped, machine {idle[name][-1]:.0%} idle", file=sys.stderr, flush=True)
    words_off, words_on = texts["off"].split(), texts["on"].split()
    similarity = difflib.SequenceMatcher(a=words_off, b=words_on, autojunk=False).ratio()
    off, on = statistics.median(times["off"]), statistics.median(times["on"])

    print(f"\n{args.bundle}: {seconds:.1f} s of audio with pauses, fed 80 ms at a time; median [min-max] of "
          f"{args.runs} runs each, alternating\n")
    print("| | endpointing off | endpointing on |")
    print("| --- | --- | --- |")
    print(f"| model time | {off:.1f} [{min(times['off']):.1f}-{max(times['off']):.1f}] s (RTF {off / seconds:.2f}) | "
          f"{on:.1f} [{min(times['on']):.1f}-{max(times['on']):.1f}] s (RTF {on / seconds:.2f}) |")
    print(f"| decoder steps run ({audio_steps} steps of audio) | {steps['off']} | {steps['on']} |")
    print(f"| audio skipped | 0 | {skipped['on']:.1f} s ({skipped['on'] / seconds:.0%}) |")
    print(f"| text | {len(words_off)} words | {len(words_on)} words, similarity to off {similarity:.2f} |")
    print(f"| machine idle while it ran | {statistics.median(idle['off']):.0%} [{min(idle['off']):.0%}-"
          f"{max(idle['off']):.0%}] | {statistics.median(idle['on']):.0%} [{min(idle['on']):.0%}-"
          f"{max(idle['on']):.0%}] |")
    ratios = [b / a for a, b in zip(times["off"], times["on"])]  # run by run: the machine drifts between runs
    print(f"\nmodel time with endpointing, run by run: {' '.join(f'{r:.2f}' for r in ratios)}x of without "
          f"(median {statistics.median(ratios):.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
