"""Streaming step benchmark: each part of an 80 ms step against its own memory-read floor, in one run.

    uv run benchmarks/step_time.py BUNDLE --checkpoint CKPT [--runs 3] [--steps 20] [--no-eager] [--compare BUNDLE2]

BUNDLE is a streaming export (e.g. benchmarks/export_full.py's xnnpack-streaming-8da4w); CKPT the checkpoint it came
from (for the layer shapes and the eager comparison). A streaming step is bound by memory reads: every weight it uses
is read once per step, and the attention scans every ring-cache slot. Each run measures, one after the other:
- read bandwidth: a reduction over 1 GiB with one thread per core (a read-only stream, what weight-streaming kernels
  need), and copy bandwidth beside it (bytes read + written);
- per part, with ExecuTorch's own profiler (ETDump; XNNPACK reports each of its operators): the encoder step, its
  linears and its attention; the decoder step, its layers' linears, the output head and its attention;
- the session's whole step as the runtime runs it (Python included), and the encoder's cost per step when queued
  audio is encoded 16 steps per call;
- a session's time to its first token and its catch-up throughput on audio fed at once, with one encoder step per
  call and with 16; a live start (the leading silence before the audio, then the first token after it) computing the
  silence and copying the engine's shared start state (start_state.py) side by side;
- how busy the machine was: the idle and steal shares of all cores over the run, and how many cores the encoder step,
  the decoder step and the session step kept busy (CPU seconds per second).
Each part's floor is its bytes / read bandwidth; the table shows the median over the runs and the spread (min-max).
Eager PyTorch on the same quantized weights is timed once, in a child process (--no-eager skips it).
--compare BUNDLE2 measures a second export of the same checkpoint in the same run, alternating the two run by run (the
machine's bandwidth drifts: only runs side by side compare), prints both tables and their steady-state steps against
each other, run by run.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import voxtral_runtime  # noqa: F401  first: it pins OpenMP to one thread before torch loads, as the runtime runs
from voxtral_runtime.bundle import read_manifest

import numpy as np
import torch

STEP_S = 0.08
BANDWIDTH_GIB = 1.0
WARMUP_CALLS = 3


# -- bytes a step reads -------------------------------------------------------------------------------------------

def linear_bytes(out_features: int, in_features: int, scheme: str | None, group_size: int) -> float:
    """Bytes of one linear's weights as the XNNPACK kernels read them: 4- or 8-bit values plus their scales (bf16 per
    group for blockwise 4-bit, fp32 per output channel otherwise); fp32 when unquantized."""
    if scheme is None:
        return 4.0 * out_features * in_features
    bits = 4 if "4w" in scheme else 8
    grouped = bits == 4 and group_size > 0
    scales = out_features * (in_features // group_size) * 2 if grouped else out_features * 4
    return out_features * in_features * bits / 8 + scales


def cache_element_bytes(meta) -> int:
    """Bytes of one KV-cache element: bf16 ring caches (pte format 5, kv_cache_dtype) or the program's dtype."""
    return 2 if (meta.kv_cache_dtype or meta.dtype) == "bf16" else 4


def encoder_part_bytes(params: dict, scheme: str | None, group_size: int, window: int,
                       cache_element: int = 4) -> dict[str, float]:
    """Bytes the streaming encoder reads per call: its layers' and the adapter's linears, and its ring caches."""
    from voxtral_model.attention import ring_slots

    whisper = params["multimodal"]["whisper_model_args"]
    enc, factor, dim = whisper["encoder_args"], whisper["downsample_args"]["downsample_factor"], params["dim"]
    e_dim, e_width, e_hidden = enc["dim"], enc["n_heads"] * enc["head_dim"], enc["hidden_dim"]
    enc_layer = sum(linear_bytes(o, i, scheme, group_size) for o, i in (
        (e_width, e_dim), (e_width, e_dim), (e_width, e_dim), (e_dim, e_width),
        (e_hidden, e_dim), (e_hidden, e_dim), (e_dim, e_hidden)))
    adapter = linear_bytes(dim, e_dim * factor, scheme, group_size) + linear_bytes(dim, dim, scheme, group_size)
    return {"encoder linears": enc["n_layers"] * enc_layer + adapter,
            "encoder attention": cache_element * 2 * enc["n_layers"] * ring_slots(window) * e_width}


def part_bytes(params: dict, meta: dict, options: dict) -> dict[str, float]:
    """Bytes each part of one step must read."""
    from voxtral_model.attention import ring_slots

    d_scheme, d_group = options["qlinear"], options["qlinear_group_size"]
    dim = params["dim"]
    q_width, kv_width, hidden = params["n_heads"] * params["head_dim"], params["n_kv_heads"] * params["head_dim"], \
        params["hidden_dim"]
    dec_layer = sum(linear_bytes(o, i, d_scheme, d_group) for o, i in (
        (q_width, dim), (kv_width, dim), (kv_width, dim), (dim, q_width),
        (hidden, dim), (hidden, dim), (dim, hidden)))
    element = cache_element_bytes(meta)
    dec_kv = element * 2 * params["n_layers"] * ring_slots(meta.sliding_window) * kv_width
    return {
        **encoder_part_bytes(params, options["qlinear_encoder"], options["qlinear_encoder_group_size"],
                             meta.max_enc_len, element),
        "decoder layer linears": params["n_layers"] * dec_layer,
        "output head": linear_bytes(params["vocab_size"], dim, d_scheme, d_group),
        "decoder attention": dec_kv,
    }


# -- measurements, each in a child process where threads or memory must be its own -------------------------------

def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bandwidth() -> dict[str, float]:
    """Read-only and copy bandwidth over all cores (bytes per second), medians of 5."""
    src = torch.ones(int(BANDWIDTH_GIB * 2**30) // 4)
    dst = torch.empty_like(src)
    src.sum(), dst.copy_(src)
    nbytes = src.numel() * 4
    return {"read": nbytes / median_time(src.sum, 5), "copy": 2 * nbytes / median_time(lambda: dst.copy_(src), 5)}


def _event_means(etdump: Path, calls: int) -> list[tuple[str, float]]:
    """(event name, mean ms over the last `calls` calls) in execution order, for the one method in the dump."""
    from executorch.devtools import Inspector

    events = []
    for block in Inspector(etdump_path=str(etdump)).event_blocks:
        if block.name != "Execute":
            continue
        for event in block.events:
            if event.perf_data is not None and len(event.perf_data.raw) >= calls:
                raw = event.perf_data.raw[-calls:]
                events.append((event.name, sum(raw) / len(raw)))
    return events


def _sum(events, pattern: str) -> float:
    return sum(ms for name, ms in events if re.search(pattern, name)) / 1e3


# Profiled steps run at positions past a full ring (80 s into the audio for the encoder's 814 slots, 800 s for the
# decoder's 2112): the ring-attention kernel skips slots no query can see yet, so a session's first steps read far
# less than the floor's full caches, and only these positions measure the steady state.
STEADY_ENCODER_STEP = 1000
STEADY_DECODER_POSITION = 10_000


class CoresBusy:
    """CPU seconds of all this process's threads per second of wall time inside the block: 2.0 on two cores means
    both were busy throughout. XNNPACK's worker threads spin a little before they sleep, so waiting counts too."""

    def __enter__(self):
        self.cpu, self.wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.cores = (time.process_time() - self.cpu) / (time.perf_counter() - self.wall)


def load_profiled(model: Path):
    """model.pte loaded with ExecuTorch's profiler on (ETDump), and the kernels its operators need."""
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401
    from executorch.extension.pybindings import portable_lib
    from executorch.kernels import quantized  # noqa: F401
    from voxtral_runtime import kernels

    kernels.load()
    return portable_lib._load_for_executorch(str(model), enable_etdump=True, debug_buffer_size=0)


def profile_method(program, method: str, inputs_at, first: int, steps: int) -> tuple[list[tuple[str, float]], float]:
    """(ETDump events of `steps` calls of `method` with `inputs_at(position)` from `first` on, after WARMUP_CALLS
    calls; the cores busy over the timed calls)."""
    for i in range(WARMUP_CALLS):  # the first call after a load also sets up every operator, on one core
        program.run_method(method, inputs_at(first + i))
    with CoresBusy() as busy:
        for i in range(WARMUP_CALLS, WARMUP_CALLS + steps):
            program.run_method(method, inputs_at(first + i))
    with tempfile.TemporaryDirectory() as tmp:
        program.write_etdump_result_to_file(f"{tmp}/method.etdp")
        return _event_means(Path(f"{tmp}/method.etdp"), steps), busy.cores


def profile_parts(model: Path, steps: int) -> dict[str, float]:
    """Seconds per step of each part in the steady state (full rings), from ETDump of an encoder load and a decoder
    load of model.pte."""
    encoder, decoder = load_profiled(model), load_profiled(model)
    dim, n_mels = encoder.run_method("dim", ())[0], encoder.run_method("num_mel_bins", ())[0]
    mel = torch.randn(1, n_mels, 8)
    enc, encoder_cores = profile_method(encoder, "encode_audio_chunk", lambda s: (mel, torch.arange(4 * s, 4 * s + 4)),
                                        STEADY_ENCODER_STEP, steps)
    embeds = torch.randn(1, 1, dim) * 0.1
    decoder.run_method("text_decoder", (torch.randn(1, 39, dim) * 0.1, torch.arange(39)))
    dec, decoder_cores = profile_method(decoder, "text_decoder", lambda p: (embeds, torch.tensor([p])),
                                        STEADY_DECODER_POSITION, steps)
    linears, attention = r"^Fully Connected", r"^(llama::(custom_sdpa|update_cache)|voxtral::ring_attention)"
    head = [ms for name, ms in dec if re.search(linears, name)][-1] / 1e3  # the last linear of the decoder
    return {
        "encoder linears": _sum(enc, linears),
        "encoder attention": _sum(enc, attention),
        "encoder step": _sum(enc, r"^Method::execute$"),
        "decoder layer linears": _sum(dec, linears) - head,
        "output head": head,
        "decoder attention": _sum(dec, attention),
        "decoder step": _sum(dec, r"^Method::execute$"),
        "encoder cores busy": encoder_cores,
        "decoder cores busy": decoder_cores,
    }


def eager_step(checkpoint: Path, manifest: dict, steps: int) -> float:
    from voxtral_export.options import ExportOptions
    from voxtral_export.quantize import quantize_model
    from voxtral_model.checkpoint import load_model
    from voxtral_model.model import RuntimeOptions

    o = manifest["options"]
    options = ExportOptions(**{**o, "model_path": Path(o["model_path"]), "output_dir": Path(o["output_dir"])})
    model = load_model(checkpoint, RuntimeOptions(
        layout=options.layout, streaming=True, decoder_window=options.sliding_window,
        encoder_window=options.max_enc_len, dtype=torch.bfloat16 if options.quantized else torch.float32))
    quantize_model(model, options, torch.float32)
    encoder = model.streaming_encoder()
    n_mels, dim = model.config.encoder.num_mel_bins, model.config.decoder.dim
    mel = torch.zeros(1, n_mels, 8)
    position = [40]
    token = torch.tensor([[32]])

    @torch.no_grad()
    def step():
        p = position[0]
        position[0] += 1
        audio = encoder(mel, torch.arange(4 * p, 4 * p + 4))
        return model.decode(audio + model.embed_tokens(token), torch.tensor([p]))

    step()
    return median_time(step, steps)


def run_child(argv: list[str], openmp_threads: int):
    """Runs a Python script with `argv` in a child process and returns the JSON it printed last. Eager matmuls and the
    bandwidth stream need an OpenMP thread per core; the profiled programs run as the runtime does, with one."""
    env = {**os.environ, "OMP_NUM_THREADS": str(openmp_threads)}
    out = subprocess.run([sys.executable, *argv], env=env, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def in_child(args: argparse.Namespace, role: str, openmp_threads: int):
    """This script's `role` (bandwidth, profile, eager) in a child process."""
    return run_child([__file__, str(args.bundle), "--checkpoint", str(args.checkpoint), "--steps", str(args.steps),
                      "--child", role], openmp_threads)


def bandwidth_in_child() -> dict[str, float]:
    """Read and copy bandwidth, measured in a child with an OpenMP thread per core."""
    return run_child([__file__, ".", "--checkpoint", ".", "--child", "bandwidth"], os.cpu_count())


# -- the runtime's own session --------------------------------------------------------------------------------------

def session_step(engine, steps: int) -> tuple[float, float, float]:
    """(wall time per step of a session fed 80 ms at a time, of which inside method calls), medians after the prompt,
    and the cores busy over those steps. The method time is taken inside the same steps, so the difference is the
    session's own work."""
    meta = engine.spec.meta
    instance = engine.instance()
    session = engine.session(instance)
    inside = [0.0]
    plain_run = instance.run

    def timed_run(method, *inputs):
        t = time.perf_counter()
        out = plain_run(method, *inputs)
        inside[0] += time.perf_counter() - t
        return out

    instance.run = timed_run
    chunk = (np.random.default_rng(0).standard_normal(meta.step_samples) * 0.05).astype(np.float32)
    for _ in range(10):  # the leading silence and the prompt prefill (at step 38, 0.56 s into the audio)
        session.feed(chunk)
    times, in_methods = [], []
    with CoresBusy() as busy:
        for _ in range(steps):
            inside[0] = 0.0
            t = time.perf_counter()
            session.feed(chunk)
            times.append(time.perf_counter() - t)
            in_methods.append(inside[0])
    engine.release(instance)
    return statistics.median(times), statistics.median(in_methods), busy.cores


def batched_encoder_step(engine, steps: int) -> float:
    """Seconds per 80 ms step of the encoder when queued audio is encoded max_encoder_steps steps per call."""
    instance = engine.instance()
    meta = engine.spec.meta
    k = meta.max_encoder_steps
    mel = torch.randn(1, meta.num_mel_bins, 8 * k)
    calls = [0]

    def call():
        s = calls[0] * k
        calls[0] += 1
        instance.run(instance.encode_chunk, mel, torch.arange(4 * s, 4 * (s + k)))

    for _ in range(WARMUP_CALLS):
        call()
    per_call = median_time(call, max(3, steps // 4))
    engine.release(instance)
    return per_call / k


def start_and_catch_up(engine, steps_per_call: int, catch_up_s: float, prepare: bool = False,
                       shared_start: bool = True) -> tuple[float, float, float]:
    """(seconds of `session.prepare()`, the leading silence run before any audio (0 unless `prepare`); seconds from
    then to the first sampled token, fed the 0.56 s of audio that token waits for at once; seconds of audio per
    second of compute for `catch_up_s` more audio fed at once), with at most `steps_per_call` encoder steps a call.
    `shared_start` False: the session computes its leading silence instead of copying the engine's start state (as
    every session did before start_state.py, and as sessions of programs without `state_buffers` still do)."""
    meta = engine.spec.meta
    instance = engine.instance()
    session = engine.session(instance)
    session.max_encoder_steps = steps_per_call
    if not shared_start:
        session.start = None
    rng = np.random.default_rng(1)
    prompt_steps = meta.n_left_pad_tokens + meta.delay_tokens + 1  # the first token comes at the last of these
    first = prompt_steps * meta.step_samples + meta.stream_lookahead - meta.n_left_pad_tokens * meta.step_samples
    t = time.perf_counter()
    if prepare:
        session.prepare()
    prepared = time.perf_counter() - t
    t = time.perf_counter()
    session.feed((rng.standard_normal(first) * 0.05).astype(np.float32))
    to_first_token = time.perf_counter() - t
    assert session.sampled == 1, session.sampled
    more = (rng.standard_normal(int(catch_up_s * meta.sample_rate)) * 0.05).astype(np.float32)
    t = time.perf_counter()
    session.feed(more)
    throughput = catch_up_s / (time.perf_counter() - t)
    engine.release(instance)
    return prepared, to_first_token, throughput


def cpu_times() -> tuple[float, float, float]:
    """(total, idle, steal) jiffies of all cores since boot, from /proc/stat (Linux)."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(fields), fields[3] + fields[4], fields[7] if len(fields) > 7 else 0.0


class MachineLoad:
    """The idle and steal shares of all cores inside the block (None where there is no /proc/stat): other work on the
    machine shows as less idle time."""

    def __enter__(self):
        self.before = cpu_times() if Path("/proc/stat").exists() else None
        self.idle = self.steal = None
        return self

    def __exit__(self, *exc):
        if self.before is not None:
            after = cpu_times()
            total = after[0] - self.before[0]
            self.idle, self.steal = (after[1] - self.before[1]) / total, (after[2] - self.before[2]) / total


def one_run(args, engine) -> dict[str, float]:
    with MachineLoad() as load:
        row = measure_once(args, engine)
    if load.idle is not None:
        row["idle share"], row["steal share"] = load.idle, load.steal
    return row


def measure_once(args, engine) -> dict[str, float]:
    row = {f"{k} bandwidth": v for k, v in bandwidth_in_child().items()}
    row.update(in_child(args, "profile", 1))
    row["session step"], row["in method calls"], row["session cores busy"] = session_step(engine, args.steps)
    row["encoder step, 16 per call"] = batched_encoder_step(engine, args.steps)
    for k in (1, engine.spec.meta.max_encoder_steps):
        _, row[f"first token, {k} per call"], row[f"catch-up, {k} per call"] = start_and_catch_up(
            engine, k, args.catch_up_s)
    # a program without state_buffers has no shared start: its sessions compute theirs, measured once
    for shared in (False, True) if engine.start_state is not None else (False,):
        key = "shared start" if shared else "computed start"
        row[f"prepare, {key}"], row[f"first token after prepare, {key}"], _ = start_and_catch_up(
            engine, engine.spec.meta.max_encoder_steps, args.catch_up_s, prepare=True, shared_start=shared)
    if engine.start_state is not None:
        row["start state bytes"] = engine.start_state.nbytes
    return row


def spread(values: list[float], scale: float, fmt: str) -> str:
    """'median [min-max]' of a figure over the runs."""
    low = f".{fmt.split('.')[-1]}"
    return f"{statistics.median(values) * scale:{fmt}} [{min(values) * scale:{low}}-{max(values) * scale:{low}}]"


def steady_steps(runs: list[dict]) -> list[float]:
    """A session's step in the steady state, per run: its two method calls at full rings plus its own Python work
    (measured in its first steps, where the rings are still filling and the attention reads less)."""
    return [r["encoder step"] + r["decoder step"] + r["session step"] - r["in method calls"] for r in runs]


def report(args, meta, runs: list[dict], nbytes: dict, eager: float | None) -> None:
    col = {k: [r[k] for r in runs] for k in runs[0]}
    col["steady-state step"] = steady_steps(runs)
    read = statistics.median(col["read bandwidth"])
    print(f"\nbundle {args.bundle} ({meta.quantization}, {meta.backend}, {meta.kv_cache_dtype or meta.dtype} KV "
          f"caches, decoder window {meta.sliding_window}, encoder window {meta.max_enc_len}); {len(runs)} runs, "
          f"{args.steps} steps each; kernels {os.environ.get('VOXTRAL_RUNTIME_KERNELS', 'built from this checkout')}")
    print(f"read bandwidth   {spread(col['read bandwidth'], 1e-9, '.1f')} GB/s (1 GiB reduction, all cores)")
    print(f"copy bandwidth   {spread(col['copy bandwidth'], 1e-9, '.1f')} GB/s (read + written)")
    if "idle share" in col:
        print(f"machine idle     {spread(col['idle share'], 100, '.0f')} %, steal {spread(col['steal share'], 100, '.0f')} %"
              f" of all cores over each run")
    enc_bytes = nbytes["encoder linears"] + nbytes["encoder attention"]
    dec_bytes = nbytes["decoder layer linears"] + nbytes["output head"] + nbytes["decoder attention"]
    rows = [(name, nbytes[name]) for name in ("encoder linears", "encoder attention")]
    rows += [("encoder step", enc_bytes)]
    rows += [(name, nbytes[name]) for name in ("decoder layer linears", "output head", "decoder attention")]
    rows += [("decoder step", dec_bytes), ("steady-state step", enc_bytes + dec_bytes),
             ("session step", enc_bytes + dec_bytes)]
    print(f"\n{'part':28s} {'reads':>8s} {'floor':>9s}   {'measured, median [min-max]':30s} {'x floor':>8s}")
    for name, b in rows:
        floor = b / read
        times = col[name]
        print(f"{name:28s} {b / 1e9:6.2f} GB {floor * 1e3:6.1f} ms   {spread(times, 1e3, '7.1f') + ' ms':30s} "
              f"{statistics.median(times) / floor:6.2f}x")
    per_step = col["encoder step, 16 per call"]
    floor = enc_bytes / 16 / read
    print(f"{'encoder step, 16 per call':28s} {enc_bytes / 16e9:6.2f} GB {floor * 1e3:6.1f} ms   "
          f"{spread(per_step, 1e3, '7.1f') + ' ms':30s} {statistics.median(per_step) / floor:6.2f}x   (per step)")
    print(f"  parts and steady-state step: full rings (past {STEADY_ENCODER_STEP} encoder steps and decoder position "
          f"{STEADY_DECODER_POSITION}); session step: a session's first {args.steps} steps after the prompt, rings "
          f"still filling")
    print(f"cores busy (CPU s per wall s, {os.cpu_count()} cores): encoder step "
          f"{spread(col['encoder cores busy'], 1, '.2f')}, decoder step {spread(col['decoder cores busy'], 1, '.2f')}, "
          f"session step {spread(col['session cores busy'], 1, '.2f')} (the session's Python runs on one)")
    whole = statistics.median(col["steady-state step"])
    overhead = [s - m for s, m in zip(col["session step"], col["in method calls"])]
    print(f"\nPython overhead per step      {spread(overhead, 1e3, '.1f')} ms ({statistics.median(overhead) / whole:.1%})")
    print(f"real-time factor, steady state {whole / STEP_S:.2f} ({'faster' if whole < STEP_S else 'slower'} than real "
          f"time); encoder 16 steps per call: {statistics.median(per_step) / statistics.median(col['encoder step']):.2f}x"
          f" the cost per step of one step per call")
    k = meta.max_encoder_steps
    print(f"\n{'':28s} {'1 encoder step per call':>26s} {f'{k} per call':>26s} {'ratio':>7s}")
    for what, unit, scale in (("first token", "s", 1), ("catch-up", "x real time", 1)):
        one, many = col[f"{what}, 1 per call"], col[f"{what}, {k} per call"]
        print(f"{what:28s} {spread(one, scale, '8.2f') + ' ' + unit:>26s} {spread(many, scale, '8.2f') + ' ' + unit:>26s} "
              f"{statistics.median(many) / statistics.median(one):6.2f}x")
    print("  first token: compute from session start to the first sampled token, the 0.56 s of audio it waits for fed "
          f"at once;\n  catch-up: seconds of audio per second of compute for {args.catch_up_s:g} s more fed at once")
    print(f"live start (session.prepare, {k} encoder steps per call), before the audio, then to the first token after "
          "its audio:")
    for key, how in (("computed start", "computing the leading silence"),
                     ("shared start", "copying the engine's start state")):
        if f"prepare, {key}" in col:
            print(f"  {how:34s} {spread(col[f'prepare, {key}'], 1, '.3f')} s, then "
                  f"{spread(col[f'first token after prepare, {key}'], 1, '.3f')} s")
    if "start state bytes" in col:
        print(f"  the start state: {col['start state bytes'][0] / 2**20:.1f} MiB, once per engine")
    if eager is not None:
        print(f"eager PyTorch step            {eager * 1e3:.1f} ms   ExecuTorch/eager {whole / eager:.3f}x")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement (default: %(default)s)")
    p.add_argument("--runs", type=int, default=3, help="repeats of the whole measurement (default: %(default)s)")
    p.add_argument("--catch-up-s", type=float, default=5.0,
                   help="audio fed at once for the catch-up throughput (default: %(default)s)")
    p.add_argument("--no-eager", action="store_true", help="skip the eager PyTorch comparison")
    p.add_argument("--compare", type=Path, metavar="BUNDLE2",
                   help="another streaming export of the same checkpoint, measured in alternation with BUNDLE")
    p.add_argument("--child", choices=["bandwidth", "profile", "eager"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child == "bandwidth":
        print(json.dumps(bandwidth()))
        return 0
    if args.child == "profile":
        print(json.dumps(profile_parts(args.bundle / "model.pte", args.steps)))
        return 0
    manifest = read_manifest(args.bundle)
    if args.child == "eager":
        print(json.dumps(eager_step(args.checkpoint, manifest, max(5, args.steps // 3))))
        return 0

    from voxtral_runtime.bundle import BundlePaths
    from voxtral_runtime.engine import Engine

    params = json.loads((args.checkpoint / "params.json").read_text())
    bundles = [args.bundle] + ([args.compare] if args.compare else [])
    measured = []  # per bundle: its args, engine and the bytes of its parts
    for bundle in bundles:
        engine = Engine(BundlePaths.resolve(bundle))
        if not engine.spec.meta.streaming:
            print(f"error: {bundle} is not a streaming export", file=sys.stderr)
            return 2
        bundle_args = copy.copy(args)
        bundle_args.bundle = bundle
        measured.append((bundle_args, engine, part_bytes(params, engine.spec.meta, read_manifest(bundle)["options"])))
    runs: list[list[dict]] = [[] for _ in bundles]
    for i in range(args.runs):
        for b, (bundle_args, engine, _) in enumerate(measured):
            print(f"run {i + 1}/{args.runs} of {bundle_args.bundle} ...", file=sys.stderr, flush=True)
            runs[b].append(one_run(bundle_args, engine))
    for b, (bundle_args, engine, nbytes) in enumerate(measured):
        eager = None if args.no_eager else in_child(bundle_args, "eager", os.cpu_count())
        report(bundle_args, engine.spec.meta, runs[b], nbytes, eager)
    if args.compare:
        first, second = steady_steps(runs[0]), steady_steps(runs[1])
        ratios = [a / b for a, b in zip(first, second)]
        print(f"\nsteady-state step, run by run: {args.bundle} {' '.join(f'{t * 1e3:.1f}' for t in first)} ms; "
              f"{args.compare} {' '.join(f'{t * 1e3:.1f}' for t in second)} ms")
        print(f"ratio (first / second) {spread(ratios, 1, '.3f')}, median over the runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
