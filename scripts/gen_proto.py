#!/usr/bin/env python3
"""Generate the Python gRPC code for proto/ into the voxtral-client package.

    python scripts/gen_proto.py            # regenerate packages/voxtral-client/src/voxtral_client/proto/
    python scripts/gen_proto.py --check    # exit 1 if the files on disk differ from a fresh generation

The generated modules live in `voxtral_client.proto` (the runtime depends on voxtral-client and imports them from
there), flat: `realtime_pb2.py`, `realtime_pb2.pyi`, `realtime_pb2_grpc.py`, plus a fixed `__init__.py`. protoc
writes `from voxtral.realtime.v1 import realtime_pb2`, which only works with proto/ on sys.path; that import is
rewritten to the package-relative `from . import realtime_pb2`. The descriptors keep their proto paths
(`voxtral/realtime/v1/realtime.proto`), so reflection and cross-language tooling see the real package names.

Output depends only on proto/ and the grpcio-tools version (which is written into the files), never on the
machine or the working directory. The output directory is owned by this script: `--check` also reports stray
files in it.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT_DIR = ROOT / "packages" / "voxtral-client" / "src" / "voxtral_client" / "proto"

INIT_PY = '''"""Generated gRPC code for the Voxtral Realtime contract (proto/voxtral/realtime/v1/realtime.proto).

Do not edit: regenerate with `python scripts/gen_proto.py`.
"""
'''

# `from voxtral.realtime.v1 import realtime_pb2 as voxtral_dot_realtime_dot_v1_dot_realtime__pb2`
_ABSOLUTE_IMPORT = re.compile(r"^from ((?:\w+\.)*\w+) import (\w+_pb2)( as \w+)?$", re.MULTILINE)


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    """All .proto files under proto_root, relative to it, sorted (deterministic order)."""
    return sorted(p.relative_to(proto_root) for p in proto_root.rglob("*.proto"))


def _relative_imports(text: str, local_modules: set[str]) -> str:
    """Rewrite imports of modules generated here to `from . import x_pb2`; leave google.protobuf etc. alone."""

    def fix(m: re.Match) -> str:
        module, name, alias = m.group(1), m.group(2), m.group(3) or ""
        if name in local_modules and not module.startswith("google."):
            return f"from . import {name}{alias}"
        return m.group(0)

    return _ABSOLUTE_IMPORT.sub(fix, text)


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> list[str]:
    """Generate into out_dir (created if needed); returns the file names written, sorted."""
    from grpc_tools import protoc

    files = proto_files(proto_root)
    if not files:
        raise SystemExit(f"no .proto files under {proto_root}")
    stems = [f.stem for f in files]
    if len(set(stems)) != len(stems):
        raise SystemExit(f"proto file names must be unique for a flat package: {stems}")
    well_known = str(resources.files("grpc_tools") / "_proto")

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp)
        args = [
            "grpc_tools.protoc",
            f"--proto_path={proto_root}",
            f"--proto_path={well_known}",
            f"--python_out={raw}",
            f"--pyi_out={raw}",
            f"--grpc_python_out={raw}",
            *(str(f.as_posix()) for f in files),
        ]
        # Run from proto_root so the file arguments are relative to it and to --proto_path alike; the generated
        # code embeds proto-root-relative paths only.
        cwd = os.getcwd()
        try:
            os.chdir(proto_root)
            rc = protoc.main(args)
        finally:
            os.chdir(cwd)
        if rc != 0:
            raise SystemExit(f"protoc failed with exit code {rc}")

        local = {f"{s}_pb2" for s in stems} | {f"{s}_pb2_grpc" for s in stems}
        out_dir.mkdir(parents=True, exist_ok=True)
        written = ["__init__.py"]
        (out_dir / "__init__.py").write_text(INIT_PY, encoding="utf-8", newline="\n")
        for path in sorted(raw.rglob("*")):
            if not path.is_file():
                continue
            text = _relative_imports(path.read_text(encoding="utf-8"), local)
            (out_dir / path.name).write_text(text, encoding="utf-8", newline="\n")
            written.append(path.name)
        for name in _listing(out_dir) - set(written):  # left over from a proto file that no longer exists
            (out_dir / name).unlink()
    return sorted(written)


def _listing(directory: Path) -> set[str]:
    if not directory.is_dir():
        return set()
    return {p.name for p in directory.iterdir() if p.is_file() and p.suffix in (".py", ".pyi")}


def check(out_dir: Path, proto_root: Path = PROTO_ROOT) -> int:
    """0 if out_dir holds exactly what a fresh generation gives, else 1 (with a diff on stderr)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "proto"
        expected = set(generate(fresh, proto_root))
        actual = _listing(out_dir)
        problems = []
        for name in sorted(expected - actual):
            problems.append(f"missing: {out_dir / name}")
        for name in sorted(actual - expected):
            problems.append(f"stray file (not generated from proto/): {out_dir / name}")
        for name in sorted(expected & actual):
            want = (fresh / name).read_text(encoding="utf-8")
            have = (out_dir / name).read_text(encoding="utf-8")
            if want != have:
                diff = difflib.unified_diff(
                    have.splitlines(keepends=True), want.splitlines(keepends=True),
                    f"{name} (on disk)", f"{name} (fresh)", n=1,
                )
                problems.append(f"stale: {out_dir / name}\n" + "".join(list(diff)[:40]))
    if problems:
        print("generated gRPC code is stale; run `python scripts/gen_proto.py`:", file=sys.stderr)
        for p in problems:
            print("  " + p, file=sys.stderr)
        return 1
    print(f"generated gRPC code in {out_dir} is up to date")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with a fresh generation; exit 1 if stale")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.out)
    for name in generate(args.out):
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
