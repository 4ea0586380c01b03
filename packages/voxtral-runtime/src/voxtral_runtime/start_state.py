"""The state every streaming session starts from, computed once per engine and copied into each new session.

A streaming session begins with 32 steps of silence and a prompt that is the same for every session, so whatever the
model computes before the client's audio reaches a step is the same too: the encoder over the leading silence (all
but its last step, whose look-ahead reaches into the audio) and the decoder over the prompt rows paired with those
steps. At full size that is two encoder calls and a 31-row prefill, about 0.6 s of a session's start. The engine
runs it once and keeps what it wrote into the program's state buffers (KV caches, conv state: the .pte's
`state_buffers`); a new session copies that into its own instance instead of computing it.

What the silence wrote is found without knowing the buffers' layout: it runs twice, over buffers filled with 0 and
then with 1, and the elements that come out the same both times are the ones it wrote (an element it left alone
keeps its 0 or 1). Only those are kept and copied: the first slots of each ring cache and the conv state, a small
part of the caches. The rest of a restored instance holds whatever the session before left there, as it does for a
session that computes its start: the masks hide every slot a session has not written. The saved values are never
written after capture: sessions copy from them, never into them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .programs import ModelInstance

# Runs of written elements kept per buffer at most; past it the whole buffer is kept (a layout where the silence's
# writes are scattered; the ring caches hold the first positions' slots in one run).
MAX_RUNS_PER_BUFFER = 64


@dataclass(frozen=True)
class Piece:
    """Saved values of elements [start, end) of state buffer `buffer` (flattened)."""

    buffer: int
    start: int
    end: int
    values: torch.Tensor


@dataclass(frozen=True)
class StartState:
    steps: int  # padded steps it covers: the session goes on at this step and decoder position
    pieces: tuple[Piece, ...]

    @property
    def nbytes(self) -> int:
        return sum(p.values.numel() * p.values.element_size() for p in self.pieces)

    @classmethod
    def capture(cls, instance: ModelInstance, run_silence: Callable[[], int]) -> "StartState":
        """`run_silence` runs a session's leading silence on `instance` and returns the steps it ran (a fresh
        session's prepare). It runs twice; what it wrote is kept."""
        for buffer in instance.state:
            buffer.fill_(0.0)
        steps = run_silence()
        first = [buffer.clone() for buffer in instance.state]  # the second outcome stays in the instance
        for buffer in instance.state:
            buffer.fill_(1.0)
        if run_silence() != steps:
            raise RuntimeError("the leading silence ran a different number of steps the second time")
        pieces = []
        for index, buffer in enumerate(instance.state):
            values = first[index].reshape(-1)
            runs = written_runs(values == buffer.reshape(-1))
            if len(runs) > MAX_RUNS_PER_BUFFER:
                runs = [(0, values.numel())]
            pieces += [Piece(index, start, end, values[start:end].clone()) for start, end in runs]
        return cls(steps, tuple(pieces))

    def restore(self, instance: ModelInstance) -> None:
        for piece in self.pieces:
            instance.state[piece.buffer].view(-1)[piece.start : piece.end].copy_(piece.values)


def written_runs(written: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of each run of True in a flat bool tensor."""
    edges = torch.nn.functional.pad(written.to(torch.int8), (1, 1)).diff().nonzero().view(-1).tolist()
    return list(zip(edges[0::2], edges[1::2]))
