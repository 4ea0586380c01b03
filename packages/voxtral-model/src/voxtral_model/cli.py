"""`voxtral-model`: tools around the checkpoint (synthetic checkpoints, checking a real one)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .checkpoint import CheckpointError, check_checkpoint
from .config import WEIGHTS_FILE, ConfigError, load_config
from .synth import DIMS, write_synthetic_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voxtral-model", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synth", help="write a random checkpoint in Mistral's exact format (random weights!)")
    synth.add_argument("--out", required=True, help="directory to write params.json, tekken.json, "
                                                    "consolidated.safetensors into")
    synth.add_argument("--dims", choices=sorted(DIMS), default="tiny",
                       help="tiny: test-sized; full: the real shapes (~9 GB, for benchmarks)")
    synth.add_argument("--seed", type=int, default=0)
    check = sub.add_parser("check", help="validate a checkpoint directory (config fields, tensor names and shapes)")
    check.add_argument("model_dir")
    args = parser.parse_args(argv)

    try:
        if args.command == "synth":
            start = time.monotonic()
            out = write_synthetic_checkpoint(args.out, args.dims, args.seed, progress=True)
            print(f"wrote a synthetic {args.dims} checkpoint (random weights) to {out} "
                  f"in {time.monotonic() - start:.1f} s", file=sys.stderr)
        elif args.command == "check":
            config = load_config(args.model_dir)
            check_checkpoint(Path(args.model_dir) / WEIGHTS_FILE, config)
            print(f"{args.model_dir}: ok (encoder {config.encoder.n_layers} layers x {config.encoder.dim}, "
                  f"decoder {config.decoder.n_layers} layers x {config.decoder.dim}, delay {config.delay_tokens} "
                  f"tokens)")
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
