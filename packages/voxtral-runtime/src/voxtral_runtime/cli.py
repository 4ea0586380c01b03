"""`voxtral-runtime`: run exported Voxtral Realtime programs locally (transcribe) or behind gRPC (serve)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voxtral-runtime", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from . import transcribe

    transcribe.add_arguments(sub.add_parser("transcribe", help="transcribe a WAV file or stdin microphone audio"))
    try:
        from . import server
    except ImportError:  # the server lands with the gRPC contract
        server = None
    if server is not None:
        server.add_arguments(sub.add_parser("serve", help="serve the model over a gRPC bidirectional stream"))
    args = parser.parse_args(argv)
    if args.command == "transcribe":
        return transcribe.run(args)
    return server.run(args)


if __name__ == "__main__":
    sys.exit(main())
