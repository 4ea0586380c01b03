"""voxtral::ring_attention against llama.custom_sdpa on the full-size shapes, one-operator programs, side by side.

    uv run benchmarks/ring_attention.py {dec,enc,enc16,pre} [LAYERS]

dec: a live decoder step (1 position, 32 query / 8 KV heads, 2112 slots); enc: a live encoder step (4 positions,
32 heads, 814 slots); enc16: 16 queued encoder steps; pre: the 39-row prompt prefill. Each program attends LAYERS
separate caches per call (default twice the model's layers: 64 encoder or 52 decoder layers, 0.85-0.9 GB, beyond any
last-level cache, so the figures are the in-step ones); prints the error of both against float64, ms per layer, and
the bytes of the caches over that time beside a 2-thread sum over the same caches (the read floor). Each is timed in
its own loop: torch's sum leaves its OpenMP threads spinning, which would steal a core from the next call.
"""
import os, sys, tempfile, time, statistics
import voxtral_runtime  # noqa: F401  thread settings, as the runtime runs
import torch
from executorch.extension.llm.custom_ops import custom_ops  # noqa
from voxtral_model.ring_attention import reference
from voxtral_model.attention import attention_mask
from executorch.exir import to_edge_transform_and_lower, EdgeCompileConfig
from executorch.runtime import Runtime
from voxtral_runtime import kernels

kernels.load()

which = sys.argv[1]
S, H, Hkv, D, N, W = {"dec": (1, 32, 8, 128, 2112, 2048), "enc": (4, 32, 32, 64, 814, 750),
                      "enc16": (64, 32, 32, 64, 814, 750), "pre": (39, 32, 8, 128, 2112, 2048)}[which]
L = int(sys.argv[2]) if len(sys.argv) > 2 else (64 if Hkv == 32 else 52)
START = int(os.environ.get("START", "5000"))

class M(torch.nn.Module):
    def __init__(self, mode):
        super().__init__(); self.mode = mode
        g = torch.Generator().manual_seed(1)
        for i in range(L):
            self.register_buffer(f"k{i}", torch.randn(1, N, Hkv, D, generator=g)); self.register_buffer(f"v{i}", torch.randn(1, N, Hkv, D, generator=g))
    def forward(self, q, mask):
        per_layer = []

        for i in range(L):
            k, v = getattr(self, f"k{i}"), getattr(self, f"v{i}")
            if self.mode == "ring":
                y = torch.ops.voxtral.ring_attention(q, k, v, mask)
            else:
                rep = H // Hkv
                if rep == 1:
                    y = torch.ops.llama.custom_sdpa(q, k, v, 0, mask, 0.0, False)
                else:
                    f = q.reshape(1, S, Hkv, rep, D).permute(0, 3, 1, 2, 4).reshape(1, rep * S, Hkv, D)
                    y = torch.ops.llama.custom_sdpa(f, k, v, 0, mask.repeat(rep, 1), 0.0, False)
                    y = y.reshape(1, rep, S, Hkv, D).permute(0, 2, 3, 1, 4).reshape(1, S, H, D)
            per_layer.append(y.reshape(1, S, H, D))
        return torch.stack(per_layer)

torch.manual_seed(0)
q = torch.randn(1, S, H, D) * 0.3
pos = torch.arange(START, START + S)
mask = attention_mask(pos, N, W, True, torch.float32, float("-inf"))
methods, outs = {}, {}
SCRATCH = tempfile.TemporaryDirectory()
for mode in ("ring", "sdpa"):
    m = M(mode).eval()
    prog = to_edge_transform_and_lower(torch.export.export(m, (q, mask)),
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False)).to_executorch()
    path = os.path.join(SCRATCH.name, f"{mode}.pte")
    with open(path, "wb") as f:
        f.write(prog.buffer)
    methods[mode] = Runtime.get().load_program(path).load_method("forward")
    outs[mode] = methods[mode].execute([q, mask])[0]
m = M("ring")
with torch.no_grad():
    ref = torch.stack([reference(q.double(), getattr(m, f"k{i}").double(), getattr(m, f"v{i}").double(), mask.double()) for i in range(L)])
for mode in outs:
    print(f"{mode}: max abs err vs fp64 {(outs[mode].double() - ref).abs().max().item():.2e}")
kv = torch.cat([getattr(m, f"k{i}").flatten() for i in range(L)] + [getattr(m, f"v{i}").flatten() for i in range(L)])
times = {"ring": [], "sdpa": [], "sum": []}
for mode, meth in methods.items():
    for _ in range(int(os.environ.get("ITERS", "15"))):
        t = time.perf_counter(); meth.execute([q, mask]); times[mode].append(time.perf_counter() - t)
torch.set_num_threads(2)
for _ in range(15):
    t = time.perf_counter(); kv.sum(); times["sum"].append(time.perf_counter() - t)
nbytes = kv.numel() * 4
for mode, ts in times.items():
    t = statistics.median(ts)
    print(f"{which} {mode}: {t / L * 1e3:.3f} ms/layer  {nbytes / t / 1e9:.1f} GB/s  [{min(ts)/L*1e3:.3f}-{max(ts)/L*1e3:.3f}]")
