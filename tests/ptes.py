"""Loading exported programs in tests through executorch.runtime (the same API the runtime package uses)."""

from __future__ import annotations

from pathlib import Path

import torch


def load_program(path: Path):
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401  (llama op kernels)
    from executorch.kernels import quantized  # noqa: F401  (quantized embedding kernels)
    from executorch.runtime import Runtime
    from voxtral_runtime import kernels

    kernels.load()  # voxtral::ring_attention, which streaming programs call
    return Runtime.get().load_program(str(path))


class Program:
    """Thin helper: program.method(name)(*tensors) -> first output; constants by name."""

    def __init__(self, path: Path):
        self.program = load_program(path)
        self.methods: dict = {}

    def __call__(self, name: str, *inputs: torch.Tensor) -> torch.Tensor:
        if name not in self.methods:
            self.methods[name] = self.program.load_method(name)
        return self.methods[name].execute([x.contiguous() for x in inputs])[0]

    def constant(self, name: str):
        return self.program.load_method(name).execute([])[0]
