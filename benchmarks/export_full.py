"""Full-size export benchmark: peak memory and time of the README recipes on the real model's shapes.

    uv run voxtral-model synth --out /data/full --dims full      # ~9 GB synthetic checkpoint (random weights)
    uv run benchmarks/export_full.py /data/full --out /data/exports [--recipe xnnpack-streaming-8da4w ...]

Each recipe runs `voxtral-export` in its own process (so peak memory is its own) and the figures come from the
manifest it writes: phase durations and the process's peak RSS. On Linux the child's /proc status is also sampled
every second, splitting the peak into anonymous memory (what the export allocates) and file pages (the mmapped
checkpoint, which the kernel can drop under pressure). Prints one table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

from voxtral_runtime.bundle import read_manifest

RECIPES = {
    "xnnpack-streaming-8da4w": ["--streaming", "--sliding-window", "2048", "--qlinear-encoder", "8da4w",
                                "--qlinear", "8da4w", "--qembedding", "8w"],
    "xnnpack-offline-8da4w": ["--qlinear-encoder", "8da4w", "--qlinear", "8da4w", "--qembedding", "8w"],
}


def sample_peaks(pid: int, peaks: dict[str, float], done: threading.Event) -> None:
    """Peak RssAnon and RssFile (GiB) of a running process, from /proc/PID/status once a second."""
    status = Path(f"/proc/{pid}/status")
    while not done.wait(1.0):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
        except OSError:
            return
        for key in ("RssAnon", "RssFile"):
            if key in fields:
                peaks[key] = max(peaks.get(key, 0.0), int(fields[key].split()[0]) / 2**20)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--recipe", action="append", choices=sorted(RECIPES))
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more voxtral-export flags")
    args = p.parse_args()
    rows = []
    for name in args.recipe or list(RECIPES):
        out = args.out / name
        cmd = [sys.executable, "-m", "voxtral_export.cli", "--model-path", str(args.checkpoint), "--output-dir",
               str(out), *RECIPES[name], *args.extra]
        print(f"$ voxtral-export {' '.join(cmd[3:])}", flush=True)
        started = time.monotonic()
        child = subprocess.Popen(cmd)
        peaks: dict[str, float] = {}
        done = threading.Event()
        sampler = threading.Thread(target=sample_peaks, args=(child.pid, peaks, done), daemon=True)
        sampler.start()
        if child.wait():
            raise SystemExit(f"voxtral-export failed (exit {child.returncode})")
        done.set()
        sampler.join()
        wall = time.monotonic() - started
        manifest = read_manifest(out)
        checkpoint_gib = (args.checkpoint / "consolidated.safetensors").stat().st_size / 2**30
        rows.append((name, wall, manifest["peak_memory_gib"], checkpoint_gib, manifest["files"]["model.pte"] / 2**30,
                     manifest["phase_seconds"], peaks))
    print("\nrecipe                      wall      peak RSS   checkpoint  model.pte   peak/checkpoint")
    for name, wall, peak, ckpt, pte, phases, peaks in rows:
        print(f"{name:26s} {wall:7.0f} s {peak:8.1f} GiB {ckpt:8.1f} GiB {pte:7.2f} GiB {peak / ckpt:10.2f}x")
        print("    phases: " + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items()))
        if peaks:
            print(f"    sampled peaks: anonymous {peaks.get('RssAnon', 0):.1f} GiB, "
                  f"file pages {peaks.get('RssFile', 0):.1f} GiB (not necessarily at the same moment)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
