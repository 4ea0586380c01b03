"""`voxtral-runtime`: run exported Voxtral Realtime programs locally (transcribe) or behind gRPC (serve)."""

from __future__ import annotations

import argparse
import sys


def _add_build_kernels(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Compile the runtime's own ExecuTorch kernels for this machine (streaming programs call "
                          "voxtral::ring_attention) and print the library's path. transcribe and serve do this on "
                          "first use; run it ahead, e.g. in a container build, and point VOXTRAL_RUNTIME_KERNELS at "
                          "the path to skip the compiler at run time.")
    parser.add_argument("--force", action="store_true", help="recompile even if a matching build is cached")


def _build_kernels(args: argparse.Namespace) -> int:
    from . import kernels

    try:
        print(kernels.build(force=args.force))
    except kernels.KernelBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voxtral-runtime", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from . import serve, transcribe

    transcribe.add_arguments(sub.add_parser("transcribe", help="transcribe a WAV file or stdin microphone audio"))
    serve.add_arguments(sub.add_parser("serve", help="serve the model over a gRPC bidirectional stream"))
    _add_build_kernels(sub.add_parser("build-kernels", help="compile the runtime's attention kernel for this machine"))
    args = parser.parse_args(argv)
    if args.command == "transcribe":
        return transcribe.run(args)
    if args.command == "build-kernels":
        return _build_kernels(args)
    return serve.run(args)


if __name__ == "__main__":
    sys.exit(main())
