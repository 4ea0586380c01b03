"""The state every streaming session starts from, computed once per engine and copied into each new session.

A streaming session begins with 32 steps of silence and a prompt that is the same for every session, so whatever the
model computes before the client's audio reaches a step is the same too: the encoder over the leading silence (all
but its last step, whose look-ahead reaches into the audio) and the decoder over the prompt rows paired with those
steps. At full size that is two encoder calls and a 31-row prefill, about 0.65 s of a session's start. The engine
runs it once and keeps a copy of the program's state buffers (KV caches, conv state: the .pte's `state_buffers`);
a new session copies it into its own instance instead of computing it (tens of milliseconds, a memory copy).

The copy covers whole buffers, so a restored instance holds exactly what the computing one held, whatever an earlier
session left in it. It is never written after capture: sessions copy from it, never into it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .programs import ModelInstance


@dataclass(frozen=True)
class StartState:
    steps: int  # padded steps it covers: the session goes on at this step and decoder position
    tensors: tuple[torch.Tensor, ...]  # a copy of each state buffer (ModelInstance.state's order)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    @classmethod
    def capture(cls, instance: ModelInstance, steps: int) -> "StartState":
        """The instance's state after a session's `prepare` ran `steps` steps on it."""
        return cls(steps, tuple(t.clone() for t in instance.state))

    def restore(self, instance: ModelInstance) -> None:
        for buffer, saved in zip(instance.state, self.tensors, strict=True):
            buffer.copy_(saved)
