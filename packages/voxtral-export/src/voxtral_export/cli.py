"""`voxtral-export`: a Mistral Voxtral Realtime checkpoint directory -> ExecuTorch programs for a device.

Writes one bundle directory that `voxtral-runtime` can be pointed at: model.pte, preprocessor.pte, tekken.json and
manifest.json. Flags follow the ExecuTorch example's export_voxtral_rt.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import (
    BACKENDS, DEFAULT_GROUP_SIZE, DEFAULT_MAX_AUDIO_LEN_S, DEFAULT_MAX_ENC_LEN, DEFAULT_MAX_SEQ_LEN,
    DEFAULT_OUTPUT_DIR, DTYPES, EMBEDDING_QUANT, LINEAR_QUANT, ExportError, ExportOptions,
)

EPILOG = """\
quantization schemes (torchao): 4w = int4 weights, 8w = int8 weights, 8da4w / 8da8w = int8 dynamic activations with
int4 / int8 weights, fpa4w = float activations with int4 weights (Metal only). 4-bit schemes use groups of
--*-group-size input features (it must divide every quantized layer's input width, and be a multiple of 32 for
XNNPACK's 8da4w kernels; checked before work starts), or one scale per output channel with group size 0;
8-bit schemes are always per output channel. The decoder's ada-norm projections depend only on the delay: they are folded
into a per-layer constant at export and never quantized, so their 32-wide bottleneck does not limit the group size
(64 and 128 work).

backends and schemes (ExecuTorch 1.5.1): XNNPACK runs 8da4w and 8da8w linears multi-threaded, the fast CPU path.
Weight-only 4w/8w linears (which XNNPACK 1.5.1 would miscompute) and every quantized linear on the portable backend
keep their int8/int4 weights in the program and dequantize them per call with ExecuTorch's quantized kernels: correct
and small, but slower (on XNNPACK the matmul itself is still delegated). 8w embeddings run on every CPU backend.
Metal takes fpa4w.

recipes:
  XNNPACK, streaming: --streaming --kv-cache-dtype bf16 --qlinear-encoder 8da4w --qlinear 8da4w --qembedding 8w
  XNNPACK, offline:   --qlinear-encoder 8da4w --qlinear 8da4w --qembedding 8w
  Metal (macOS):      --backend metal --dtype bf16 --qlinear-encoder fpa4w --qlinear fpa4w
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="voxtral-export", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True, type=Path,
                   help="checkpoint directory with params.json, consolidated.safetensors, tekken.json")
    p.add_argument("--backend", choices=BACKENDS, default="xnnpack", help="default: %(default)s")
    p.add_argument("--output-dir", type=Path, default=Path(DEFAULT_OUTPUT_DIR), help="default: %(default)s")
    p.add_argument("--streaming", action="store_true",
                   help="export the 80 ms streaming encoder and a ring-cache decoder (unbounded streams) instead "
                        "of the whole-signal encoder")
    p.add_argument("--max-seq-len", type=int, default=DEFAULT_MAX_SEQ_LEN,
                   help="offline decoder cache size in tokens (80 ms each); also the longest decoder call "
                        "(default: %(default)s)")
    p.add_argument("--delay-tokens", type=int, default=None,
                   help="transcription delay in 80 ms tokens (default: tekken.json, 6 = 480 ms)")
    p.add_argument("--max-enc-len", type=int, default=DEFAULT_MAX_ENC_LEN,
                   help="streaming encoder attention window in encoder frames (default: %(default)s, as trained)")
    p.add_argument("--sliding-window", type=int, default=None,
                   help="streaming decoder attention window in tokens (default: params.json, 8192); smaller "
                        "shrinks the ring cache")
    p.add_argument("--max-audio-len", type=float, default=DEFAULT_MAX_AUDIO_LEN_S,
                   help="longest offline input in seconds (default: %(default)s)")
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="default: %(default)s")
    p.add_argument("--kv-cache-dtype", choices=DTYPES, default=None,
                   help="what the streaming ring KV caches store (default: --dtype). bf16 halves the bytes a live "
                        "step scans and the cache memory of every session: keys and values are rounded to bf16 "
                        "when written, attention still runs in fp32. Streaming CPU programs only")
    p.add_argument("--qlinear", choices=LINEAR_QUANT, help="decoder linears (and the output head)")
    p.add_argument("--qlinear-group-size", type=int, default=DEFAULT_GROUP_SIZE,
                   help="4-bit group size, 0 = per output channel (default: %(default)s)")
    p.add_argument("--qlinear-encoder", choices=LINEAR_QUANT, help="encoder and adapter linears")
    p.add_argument("--qlinear-encoder-group-size", type=int, default=DEFAULT_GROUP_SIZE,
                   help="4-bit group size, 0 = per output channel (default: %(default)s)")
    p.add_argument("--qembedding", choices=EMBEDDING_QUANT, help="token embedding table")
    p.add_argument("--qembedding-group-size", type=int, default=0, help="0 = per row (default)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def options_from_args(args: argparse.Namespace) -> ExportOptions:
    return ExportOptions(
        model_path=args.model_path, backend=args.backend, output_dir=args.output_dir, streaming=args.streaming,
        max_seq_len=args.max_seq_len, delay_tokens=args.delay_tokens, max_enc_len=args.max_enc_len,
        sliding_window=args.sliding_window, max_audio_len=args.max_audio_len, dtype=args.dtype,
        qlinear=args.qlinear, qlinear_group_size=args.qlinear_group_size, qlinear_encoder=args.qlinear_encoder,
        qlinear_encoder_group_size=args.qlinear_encoder_group_size, qembedding=args.qembedding,
        qembedding_group_size=args.qembedding_group_size, kv_cache_dtype=args.kv_cache_dtype)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = options_from_args(args)
    from .pipeline import export_bundle
    from .progress import Progress

    try:
        export_bundle(options, Progress(enabled=not args.quiet))
    except ExportError as e:
        print(f"voxtral-export: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
