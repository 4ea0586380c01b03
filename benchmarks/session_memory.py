"""What each extra server session costs in memory, measured in one process.

    uv run benchmarks/session_memory.py BUNDLE [--sessions 3]

The server gives every call its own program instance (KV caches and conv state live inside loaded methods). This
loads instances one after another, runs one step on each (XNNPACK packs weights and sizes its workspace on first
use), and prints the process's memory after each: private memory (RssAnon: heap, packed weights, planned buffers)
and file-backed memory (RssFile: the memory-mapped .pte, shared by every instance and with the page cache).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def memory_gib() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmRSS"):
            fields[key] = int(value.split()[0]) / 2**20
    return fields


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path)
    p.add_argument("--sessions", type=int, default=3)
    args = p.parse_args()

    from voxtral_runtime.engine import Engine
    from voxtral_runtime.programs import BundlePaths

    before = memory_gib()
    engine = Engine(BundlePaths.resolve(args.bundle))
    meta = engine.spec.meta
    chunk = np.zeros(meta["step_samples"] * (10 if meta["streaming"] else 25), dtype=np.float32)
    rows = [("runtime imported", before)]
    instances = []
    for i in range(args.sessions):
        started = time.monotonic()
        instance = engine.instance()
        session = engine.session(instance)
        session.feed(chunk)
        if not meta["streaming"]:
            session.flush()
        instances.append((instance, session))
        rows.append((f"{i + 1} session(s) ({time.monotonic() - started:.1f} s to load and step)", memory_gib()))
    pte_gib = (args.bundle / "model.pte").stat().st_size / 2**30
    print(f"\nbundle {args.bundle}: model.pte {pte_gib:.2f} GiB ({meta['quantization']}, {meta['backend']})")
    print(f"{'':48s} {'private':>9s} {'file':>9s} {'RSS':>9s}  (GiB)")
    for name, m in rows:
        print(f"{name:48s} {m['RssAnon']:9.2f} {m['RssFile']:9.2f} {m['VmRSS']:9.2f}")
    if args.sessions > 1:
        first = rows[1][1]["RssAnon"] - rows[0][1]["RssAnon"]
        extra = (rows[-1][1]["RssAnon"] - rows[1][1]["RssAnon"]) / (args.sessions - 1)
        print(f"first session: {first:.2f} GiB private; each extra session: {extra:.2f} GiB private "
              f"({extra / pte_gib:.2f}x model.pte)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
