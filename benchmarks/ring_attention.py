"""voxtral::ring_attention on the full-size shapes, one-operator programs, against its read floor, side by side.

    uv run benchmarks/ring_attention.py [--shape dec enc enc16 pre] [--kv fp32 bf16] [--baseline-kernels LIB]
                                        [--sdpa] [--layers N] [--iters 15]

Shapes: dec, a live decoder step (1 position, 32 query / 8 KV heads, head_dim 128, 2112 slots); enc, a live encoder
step (4 positions, 32 heads, head_dim 64, 814 slots); enc16, 16 queued encoder steps; pre, the 39-row prompt
prefill. Each program attends --layers separate caches per call (default twice the model's layers: 64 encoder or 52
decoder layers, 0.45-0.9 GB, beyond any last-level cache, so the figures are the in-step ones). For every shape and
cache type it prints the error against float64 (on the stored cache values), ms per layer, the cache bytes over
that time, and the same bytes summed by torch with one thread per core (the read floor), measured in the same child.
--baseline-kernels LIB adds rows for another build of the kernel (e.g. the previous commit's, built with
`voxtral-runtime build-kernels`; a row says so when that build refuses the caches); --sdpa adds ExecuTorch's llama.custom_sdpa (float32 caches). Every configuration
runs in its own process (a process registers one kernel library), one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import voxtral_runtime  # noqa: F401  thread settings, as the runtime runs

SHAPES = {  # S query positions, H query heads, Hkv KV heads, D head_dim, N ring slots, W window, default layers
    "dec": (1, 32, 8, 128, 2112, 2048, 52),
    "enc": (4, 32, 32, 64, 814, 750, 64),
    "enc16": (64, 32, 32, 64, 814, 750, 64),
    "pre": (39, 32, 8, 128, 2112, 2048, 52),
}
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
START = 5000  # query positions past the windows: full rings


def measure(shape: str, kv: str, mode: str, layers: int | None, iters: int) -> dict:
    """In a child: export a program attending `layers` caches, time it and a 2-thread sum over the same caches."""
    import torch
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401
    from executorch.runtime import Runtime

    from voxtral_model.attention import attention_mask
    from voxtral_model.ring_attention import reference
    from voxtral_runtime import kernels

    kernels.load()
    S, H, Hkv, D, N, W, default_layers = SHAPES[shape]
    L = layers or default_layers
    dtype = getattr(torch, DTYPES[kv])

    class Attend(torch.nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(1)
            for i in range(L):
                self.register_buffer(f"k{i}", torch.randn(1, N, Hkv, D, generator=g).to(dtype))
                self.register_buffer(f"v{i}", torch.randn(1, N, Hkv, D, generator=g).to(dtype))

        def forward(self, q, mask):
            out = []
            for i in range(L):
                k, v = getattr(self, f"k{i}"), getattr(self, f"v{i}")
                if mode == "sdpa":  # each KV head's query heads folded into rows, as attention.py did
                    rep = H // Hkv
                    f = q.reshape(1, S, Hkv, rep, D).permute(0, 3, 1, 2, 4).reshape(1, rep * S, Hkv, D)
                    y = torch.ops.llama.custom_sdpa(f, k, v, 0, mask.repeat(rep, 1), 0.0, False)
                    y = y.reshape(1, rep, S, Hkv, D).permute(0, 2, 3, 1, 4)
                else:
                    y = torch.ops.voxtral.ring_attention(q, k, v, mask)
                out.append(y.reshape(1, S, H, D))
            return torch.stack(out)

    torch.manual_seed(0)
    q = torch.randn(1, S, H, D) * 0.3
    mask = attention_mask(torch.arange(START, START + S), N, W, True, torch.float32, float("-inf"))
    model = Attend().eval()
    program = to_edge_transform_and_lower(torch.export.export(model, (q, mask)),
                                          compile_config=EdgeCompileConfig(_check_ir_validity=False)).to_executorch()
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "attend.pte")
        with open(path, "wb") as f:
            f.write(program.buffer)
        del program
        method = Runtime.get().load_program(path).load_method("forward")
        out = method.execute([q, mask])[0]
        with torch.no_grad():
            expect = torch.stack([reference(q.double(), getattr(model, f"k{i}").double(),
                                            getattr(model, f"v{i}").double(), mask.double()) for i in range(L)])
        error = (out.double() - expect).abs().max().item()
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            method.execute([q, mask])
            times.append(time.perf_counter() - t)
    # the caches' bytes as float32 words: a bfloat16 sum converts as it goes and would not run at the read rate
    caches = torch.cat([getattr(model, f"{kv}{i}").flatten() for i in range(L) for kv in "kv"]).view(torch.float32)
    del model
    torch.set_num_threads(os.cpu_count())  # after the program's calls: torch's spinning threads would steal a core
    caches.sum()  # starts torch's threads
    sums = []
    for _ in range(iters):
        t = time.perf_counter()
        caches.sum()
        sums.append(time.perf_counter() - t)
    return {"layers": L, "bytes": caches.numel() * caches.element_size(), "error": error, "times": times,
            "sum": statistics.median(sums)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", nargs="+", choices=sorted(SHAPES), default=["dec", "enc"])
    p.add_argument("--kv", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    p.add_argument("--baseline-kernels", help="another kernel library to time beside this checkout's")
    p.add_argument("--sdpa", action="store_true", help="also time llama.custom_sdpa (float32 caches)")
    p.add_argument("--layers", type=int, help="caches per call (default: twice the model's layers)")
    p.add_argument("--iters", type=int, default=15)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        shape, kv, mode = args.child.split(",")
        print(json.dumps(measure(shape, kv, mode, args.layers, args.iters)))
        return 0

    runs = []
    for shape in args.shape:
        for kv in args.kv:
            configs = [("this checkout", "ring", None)]
            if args.baseline_kernels:
                configs.append((os.path.basename(args.baseline_kernels), "ring", args.baseline_kernels))
            if args.sdpa and kv == "fp32":
                configs.append(("llama.custom_sdpa", "sdpa", None))
            for label, mode, library in configs:
                env = dict(os.environ)
                if library:
                    env["VOXTRAL_RUNTIME_KERNELS"] = library
                print(f"{shape} {kv} {label} ...", file=sys.stderr, flush=True)
                cmd = [sys.executable, __file__, "--child", f"{shape},{kv},{mode}", "--iters", str(args.iters)]
                if args.layers:
                    cmd += ["--layers", str(args.layers)]
                done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    if library:  # a baseline may refuse what it predates (kernels before format 5: no bf16)
                        runs.append((shape, kv, label, None))
                        continue
                    print(done.stderr[-3000:], file=sys.stderr)
                    return 1
                runs.append((shape, kv, label, json.loads(done.stdout.strip().splitlines()[-1])))
    print(f"\n{'shape':6s} {'caches':6s} {'kernel':28s} {'ms/layer, median [min-max]':28s} {'GB/s':>6s} "
          f"{'floor GB/s':>10s} {'x floor':>7s} {'max err':>8s}")
    for shape, kv, label, r in runs:
        if r is None:
            print(f"{shape:6s} {kv:6s} {label:28s} failed (the library refuses these caches)")
            continue
        t = statistics.median(r["times"])
        per = [x / r["layers"] * 1e3 for x in (t, min(r["times"]), max(r["times"]))]
        print(f"{shape:6s} {kv:6s} {label:28s} {f'{per[0]:.3f} [{per[1]:.3f}-{per[2]:.3f}]':28s} "
              f"{r['bytes'] / t / 1e9:6.1f} {r['bytes'] / r['sum'] / 1e9:10.1f} {t / r['sum']:7.2f} "
              f"{r['error']:8.1e}")
    print("floor: the same cache bytes summed by torch on all cores, in the same process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
