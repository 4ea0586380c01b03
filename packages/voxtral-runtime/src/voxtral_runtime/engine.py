"""The loaded model: shared spec and prompt embeddings, and sessions over per-session program instances."""

from __future__ import annotations

import numpy as np
import torch

from .programs import BundlePaths, ModelInstance, ModelSpec, ProgramError, load_spec
from .sampling import Sampler
from .session import OfflineSession, Session, StreamingSession

WARMUP_SECONDS = 0.8  # enough audio for the prompt prefill and a few single-token decoder steps


class Engine:
    def __init__(self, paths: BundlePaths, share_weights: bool = True):
        """`share_weights`: sessions share one copy of XNNPACK's packed weights (programs.share_packed_weights)."""
        self.spec: ModelSpec = load_spec(paths, share_weights)
        first = ModelInstance(self.spec)
        prompt = torch.tensor([self.spec.prompt_ids], dtype=torch.int64)
        # The prompt's token embeddings are the same for every session: computed once.
        self.prompt_embeds = first.run(first.token_embedding, prompt)
        self._spare: list[ModelInstance] = [first]

    @property
    def streaming(self) -> bool:
        return self.spec.streaming

    def instance(self) -> ModelInstance:
        """A program instance with its own state (reuses the one loaded at start-up first)."""
        return self._spare.pop() if self._spare else ModelInstance(self.spec)

    def release(self, instance: ModelInstance) -> None:
        """Hands an instance back for a later session (a new session starts at position 0: no reset needed)."""
        self._spare.append(instance)

    def session(self, instance: ModelInstance | None = None, streaming: bool | None = None,
                temperature: float = 0.0, seed: int | None = None, max_new_tokens: int | None = None,
                token_ids: bool = False) -> Session:
        """A new session; a live (streaming) session needs a streaming program."""
        if streaming and not self.spec.streaming:
            raise ProgramError("this model.pte is an offline program (whole-audio encoder); streaming needs a "
                               "program exported with voxtral-export --streaming")
        kind = StreamingSession if self.spec.streaming else OfflineSession
        return kind(self.spec, instance or self.instance(), self.prompt_embeds, Sampler(temperature, seed=seed),
                    max_new_tokens, token_ids)

    def warm_up(self, instance: ModelInstance) -> None:
        """Runs every method once on silence so the first real request does not pay for initialisation."""
        session = self.session(instance)
        session.feed(np.zeros(int(WARMUP_SECONDS * self.spec.meta["sample_rate"]), dtype=np.float32))
        if isinstance(session, OfflineSession):
            session.flush()
