"""What each extra server session costs in memory, with XNNPACK's packed weights shared and not shared.

    uv run benchmarks/session_memory.py BUNDLE [--sessions 3]

The server gives every call its own program instance (KV caches and conv state live inside loaded methods). For each
mode, a child process loads instances one after another, runs one step on each (XNNPACK packs weights and sizes its
workspace on first use), and reports its memory after each: private memory (RssAnon: heap, packed weights, planned
buffers) and file-backed memory (RssFile: the memory-mapped .pte, shared by every instance and with the page cache).
The two modes run in separate processes because the weight-cache setting is process-wide.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MODES = {"shared": True, "unshared": False}


def memory_gib() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmRSS"):
            fields[key] = int(value.split()[0]) / 2**20
    return fields


def measure(bundle: Path, sessions: int, share_weights: bool) -> list[tuple[str, dict]]:
    """Memory after the runtime import, then after each loaded-and-stepped session."""
    from voxtral_runtime.bundle import BundlePaths
    from voxtral_runtime.engine import Engine

    rows = [("runtime imported", memory_gib())]
    engine = Engine(BundlePaths.resolve(bundle), share_weights=share_weights)
    meta = engine.spec.meta
    chunk = np.zeros(meta.step_samples * (10 if meta.streaming else 25), dtype=np.float32)
    kept = []
    for i in range(sessions):
        started = time.monotonic()
        instance = engine.instance()
        session = engine.session(instance)
        session.feed(chunk)
        if not meta.streaming:
            session.flush()
        kept.append((instance, session))
        rows.append((f"{i + 1} session(s), {time.monotonic() - started:.1f} s to load and step", memory_gib()))
        print(f"  {rows[-1][0]}", file=sys.stderr, flush=True)
    return rows


def print_mode(mode: str, rows: list) -> float | None:
    """The mode's table; returns the private memory of each extra session (GiB)."""
    print(f"\n{mode}:{'':38s} {'private':>9s} {'file':>9s} {'RSS':>9s}  (GiB)")
    for name, m in rows:
        print(f"  {name:46s} {m['RssAnon']:9.2f} {m['RssFile']:9.2f} {m['VmRSS']:9.2f}")
    first = rows[1][1]["RssAnon"] - rows[0][1]["RssAnon"]
    print(f"  first session: {first:.2f} GiB private")
    if len(rows) < 3:
        return None
    extra = (rows[-1][1]["RssAnon"] - rows[1][1]["RssAnon"]) / (len(rows) - 2)
    print(f"  each extra session: {extra:.2f} GiB private")
    return extra


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path)
    p.add_argument("--sessions", type=int, default=3)
    p.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["shared", "unshared"])
    p.add_argument("--child", choices=sorted(MODES), help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        print(json.dumps(measure(args.bundle, args.sessions, MODES[args.child])))
        return 0

    pte_gib = (args.bundle / "model.pte").stat().st_size / 2**30
    extras = {}
    for mode in args.modes:
        print(f"{mode}: loading {args.sessions} sessions in a child process", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, __file__, str(args.bundle), "--sessions", str(args.sessions),
                              "--child", mode], check=True, stdout=subprocess.PIPE, text=True).stdout
        # ExecuTorch's C++ logs share the child's stdout: the result is the one JSON line.
        rows = json.loads(next(line for line in out.splitlines() if line.startswith("[[")))
        extras[mode] = print_mode(mode, rows)
    print(f"\nbundle {args.bundle}: model.pte {pte_gib:.2f} GiB")
    for mode, extra in extras.items():
        if extra is not None:
            print(f"each extra session, {mode}: {extra:.2f} GiB private ({extra / pte_gib:.2f}x model.pte)")
    if all(extras.get(m) for m in MODES):
        print(f"sharing packed weights: an extra session costs {extras['shared'] / extras['unshared']:.2f}x the "
              f"unshared cost")
    return 0


if __name__ == "__main__":
    sys.exit(main())
