"""Where one streaming step's time goes, operator by operator, from ExecuTorch's own profiler (ETDump).

    uv run benchmarks/operator_profile.py BUNDLE [--steps 10] [--top 20]

BUNDLE is a streaming export. The encoder step and the decoder step each run in their own load of model.pte at
steady-state positions (full rings, as benchmarks/step_time.py profiles them); printed per part: the method's time,
the time and call count of each event kind per step (DELEGATE_CALL is one XNNPACK delegate call, OPERATOR_CALL one
portable or custom operator; the events below them are what runs inside, so the rows overlap), and how many cores
the part kept busy (CPU seconds per second). Many short calls leave the second core waiting between them.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import voxtral_runtime  # noqa: F401  first: one OpenMP thread, as the runtime runs

import torch  # noqa: E402

from step_time import STEADY_DECODER_POSITION, STEADY_ENCODER_STEP, load_profiled, profile_method  # noqa: E402


def report(part: str, events: list[tuple[str, float]], cores: float, top: int) -> None:
    total, calls = collections.Counter(), collections.Counter()
    for name, ms in events:
        total[name] += ms
        calls[name] += 1
    execute = total.pop("Method::execute", 0.0)
    print(f"\n{part}: {execute:.1f} ms per step, {cores:.2f} cores busy")
    print(f"{'ms per step':>12s} {'calls':>6s}  event")
    for name, ms in total.most_common(top):
        print(f"{ms:12.2f} {calls[name]:6d}  {name}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path)
    p.add_argument("--steps", type=int, default=10, help="profiled steps per part (default: %(default)s)")
    p.add_argument("--top", type=int, default=20, help="event kinds listed per part (default: %(default)s)")
    args = p.parse_args()
    model = args.bundle / "model.pte"

    encoder = load_profiled(model)
    mel = torch.randn(1, encoder.run_method("num_mel_bins", ())[0], 8)
    events, cores = profile_method(encoder, "encode_audio_chunk", lambda s: (mel, torch.arange(4 * s, 4 * s + 4)),
                                   STEADY_ENCODER_STEP, args.steps)
    report(f"encoder step (encode_audio_chunk, one 80 ms step at step {STEADY_ENCODER_STEP})", events, cores, args.top)
    del encoder

    decoder = load_profiled(model)
    dim = decoder.run_method("dim", ())[0]
    embeds = torch.randn(1, 1, dim) * 0.1
    decoder.run_method("text_decoder", (torch.randn(1, 39, dim) * 0.1, torch.arange(39)))
    events, cores = profile_method(decoder, "text_decoder", lambda p: (embeds, torch.tensor([p])),
                                   STEADY_DECODER_POSITION, args.steps)
    report(f"decoder step (text_decoder, one position at {STEADY_DECODER_POSITION})", events, cores, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
