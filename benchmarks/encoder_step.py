"""Full-size streaming encoder alone: one step per call against 16 per call, per linear scheme, against its floor.

    uv run benchmarks/encoder_step.py CKPT --out DIR [--group-size 32 --group-size 0] [--runs 3]

The encoder is the part of a step furthest from its memory floor, and exporting it alone takes a third of the whole
model's time (about 15-20 min here), so its kernels can be compared at full size without a full export. For each
8da4w group size (0 = one scale per output channel) the script exports `encode_audio_chunk` exactly as voxtral-export
does (same quantization, same method, same lowering) from the checkpoint's shapes with random weights, once, into
DIR/encoder-8da4w-G.pte. Then, in each run and side by side: read bandwidth (step_time.py's reduction), and per
program the encoder step with one step per call and per step with 16 per call, each with its linears and attention
from ExecuTorch's profiler. Prints medians and the spread over the runs, and each against bytes read / bandwidth.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import voxtral_runtime  # noqa: F401,E402  first: one OpenMP thread, as the runtime runs

import torch  # noqa: E402

from step_time import (  # noqa: E402
    WARMUP_CALLS, _event_means, _sum, bandwidth_in_child, encoder_part_bytes, run_child, spread,
)

SCHEME = "8da4w"
STEPS_PER_CALL = 16


def program_path(out: Path, group_size: int) -> Path:
    return out / f"encoder-{SCHEME}-{group_size}.pte"


def export_encoder(checkpoint: Path, group_size: int, path: Path) -> None:
    """The streaming encoder + adapter at the checkpoint's shapes (random weights: speed does not depend on them)."""
    from torchao.quantization.quant_api import quantize_

    from voxtral_export.lower import lower_to_executorch
    from voxtral_export.programs import export_streaming_encoder
    from voxtral_format.pte import ENCODE_AUDIO_CHUNK
    from voxtral_export.quantize import linear_config
    from voxtral_model.attention import require_custom_ops
    from voxtral_model.config import load_config
    from voxtral_model.encoder import Adapter, Encoder, StreamingEncoder

    require_custom_ops()
    started = time.monotonic()
    config = load_config(checkpoint)
    torch.manual_seed(0)
    encoder, adapter = Encoder(config.encoder), Adapter(config.encoder, config.decoder.dim)
    for unit in (*encoder.layers, adapter):
        quantize_(unit, linear_config(SCHEME, group_size), filter_fn=lambda m, _: isinstance(m, torch.nn.Linear))
    print(f"  quantized in {time.monotonic() - started:.0f} s", flush=True)
    program = export_streaming_encoder(StreamingEncoder(encoder, adapter, "custom"), config)
    print(f"  exported in {time.monotonic() - started:.0f} s", flush=True)
    path.write_bytes(lower_to_executorch({ENCODE_AUDIO_CHUNK: program}, "xnnpack", {}, progress=print))
    print(f"  wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.monotonic() - started:.0f} s", flush=True)


def encoder_bytes(checkpoint: Path, group_size: int) -> dict[str, float]:
    params = json.loads((checkpoint / "params.json").read_text())
    window = params["multimodal"]["whisper_model_args"]["encoder_args"]["sliding_window"]
    parts = encoder_part_bytes(params, SCHEME, group_size, window)
    return {"linears": parts["encoder linears"], "attention": parts["encoder attention"]}


def profile(path: Path, n_mels: int, calls: int) -> dict[str, float]:
    """Seconds per step (whole call, linears, attention) with 1 and with 16 steps per call, from ETDump."""
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401
    from executorch.extension.pybindings import portable_lib
    from voxtral_runtime import kernels

    kernels.load()
    result = {}
    for k in (1, STEPS_PER_CALL):
        module = portable_lib._load_for_executorch(str(path), enable_etdump=True, debug_buffer_size=0)
        mel = torch.randn(1, n_mels, 8 * k)
        for c in range(calls + WARMUP_CALLS):
            module.run_method("encode_audio_chunk", (mel, torch.arange(4 * k * c, 4 * k * (c + 1))))
        with tempfile.TemporaryDirectory() as tmp:
            module.write_etdump_result_to_file(f"{tmp}/e.etdp")
            events = _event_means(Path(f"{tmp}/e.etdp"), calls)
        for part, pattern in (("step", r"^Method::execute$"), ("linears", r"^Fully Connected"),
                              ("attention", r"^(llama::(custom_sdpa|update_cache)|voxtral::ring_attention)")):
            result[f"{part}, {k} per call"] = _sum(events, pattern) / k
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, required=True, help="where the encoder programs are written (and reused)")
    p.add_argument("--group-size", type=int, action="append", help="8da4w group size, 0 = per channel "
                   "(repeat to compare; default: 32 and 0)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--steps", type=int, default=12, help="profiled calls per measurement (default: %(default)s)")
    p.add_argument("--child", choices=["profile"], help=argparse.SUPPRESS)
    p.add_argument("--program", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child == "profile":
        from voxtral_model.config import load_config

        print(json.dumps(profile(args.program, load_config(args.checkpoint).encoder.num_mel_bins, args.steps)))
        return 0
    groups = args.group_size or [32, 0]
    args.out.mkdir(parents=True, exist_ok=True)
    for g in groups:
        if not program_path(args.out, g).exists():
            print(f"exporting the encoder with {SCHEME} group size {g} (15-20 min) ...", flush=True)
            export_encoder(args.checkpoint, g, program_path(args.out, g))

    runs = []
    for i in range(args.runs):
        print(f"run {i + 1}/{args.runs} ...", file=sys.stderr, flush=True)
        row = {"read": bandwidth_in_child()["read"]}
        for g in groups:
            profiled = run_child([__file__, str(args.checkpoint), "--out", str(args.out), "--steps", str(args.steps),
                                  "--child", "profile", "--program", str(program_path(args.out, g))], 1)
            row.update({f"{g}: {k}": v for k, v in profiled.items()})
        runs.append(row)
    col = {k: [r[k] for r in runs] for k in runs[0]}
    read = statistics.median(col["read"])
    print(f"\nread bandwidth {spread(col['read'], 1e-9, '.1f')} GB/s; {len(runs)} runs of {args.steps} calls")
    print(f"{'group size / part':36s} {'reads':>8s} {'floor':>8s}   {'measured per step [min-max]':30s} {'x floor':>7s}")
    for g in groups:
        nbytes = encoder_bytes(args.checkpoint, g)
        nbytes["step"] = nbytes["linears"] + nbytes["attention"]
        label = "per channel" if g == 0 else f"group {g}"
        for k in (1, STEPS_PER_CALL):
            for part in ("step", "linears", "attention"):
                b = nbytes[part] / k
                times = col[f"{g}: {part}, {k} per call"]
                print(f"{label + f', {k} per call, ' + part:36s} {b / 1e9:6.3f} GB {b / read * 1e3:6.1f} ms   "
                      f"{spread(times, 1e3, '7.1f') + ' ms':30s} {statistics.median(times) / (b / read):6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
