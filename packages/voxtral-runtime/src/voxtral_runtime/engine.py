"""The loaded model: shared spec and prompt embeddings, and sessions over per-session program instances."""

from __future__ import annotations

import threading

import numpy as np
import torch

from .endpointing import EndpointingOptions, EndpointingSession
from .bundle import BundlePaths, ProgramError
from .programs import ModelInstance, ModelSpec, load_spec
from .sampling import Sampler
from .session import HeldAudioSession, OfflineSession, Session, StreamingSession
from .start_state import StartState

DEFAULT_MAX_OFFLINE_AUDIO_S = 300.0  # audio a streaming program holds for one offline segment
WARMUP_SECONDS = 0.8  # enough audio for the prompt prefill and a few single-token decoder steps


class Engine:
    def __init__(self, paths: BundlePaths, share_weights: bool = True, verify: bool = True):
        """`share_weights`: sessions share one copy of XNNPACK's packed weights (programs.share_packed_weights);
        `verify`: the files are checked against their manifest's hashes (bundle.verify_files)."""
        self.spec: ModelSpec = load_spec(paths, share_weights, verify)
        first = ModelInstance(self.spec)
        prompt = torch.tensor([self.spec.prompt_ids], dtype=torch.int64)
        # The prompt's token embeddings are the same for every session: computed once.
        self.prompt_embeds = first.run(first.token_embedding, prompt)
        self.start_state = self._capture_start(first) if self.spec.streaming and first.state else None
        self._spare: list[ModelInstance] = [first]  # idle instances, reused before new ones are loaded
        self._spare_lock = threading.Lock()
        self.instances_loaded = 1  # idle and in use (a metric)

    def _capture_start(self, instance: ModelInstance) -> StartState:
        """Runs a session's leading silence (twice), for every later session to copy (start_state.py)."""
        def run_silence() -> int:
            session = StreamingSession(self.spec, instance, self.prompt_embeds)
            session.prepare()
            # nothing sampled: the prompt is longer than the silence, so the sampler and detokenizer start fresh
            assert session.sampled == 0 and not session.loop.pending
            return session.step_index

        return StartState.capture(instance, run_silence)

    @property
    def streaming(self) -> bool:
        return self.spec.streaming

    def instance(self) -> ModelInstance:
        """A program instance with its own state: an idle one if there is one, else a newly loaded one."""
        with self._spare_lock:
            if self._spare:
                return self._spare.pop()
        instance = ModelInstance(self.spec)
        with self._spare_lock:
            self.instances_loaded += 1
        return instance

    def drop(self, instance: ModelInstance) -> None:
        """Forgets an instance that must not serve again (its outputs turned non-finite)."""
        with self._spare_lock:
            self.instances_loaded -= 1

    def release(self, instance: ModelInstance) -> None:
        """Hands an instance back for a later session. A new session starts at position 0 and needs no reset: its
        masks hide what the last one left, and an instance whose outputs turned non-finite (session.ModelFault),
        the one thing a mask cannot hide, must never be released."""
        with self._spare_lock:
            self._spare.append(instance)

    def session(self, instance: ModelInstance | None = None, streaming: bool | None = None, offline: bool = False,
                temperature: float = 0.0, seed: int | None = None, max_new_tokens: int | None = None,
                token_ids: bool = False, max_offline_audio_s: float = DEFAULT_MAX_OFFLINE_AUDIO_S,
                endpointing: EndpointingOptions | None = None) -> Session:
        """A new session. `streaming`: a live session, which needs a streaming program. `offline`: audio is held
        and transcribed at each flush and at the end (an offline program always works so; a streaming program
        holds up to `max_offline_audio_s` of it). `endpointing`: a voice activity detector ends segments at pauses
        and keeps the model idle while there is no speech (a live session only)."""
        if (streaming or endpointing) and not self.spec.streaming:
            raise ProgramError("this model.pte is an offline program (whole-audio encoder); streaming and "
                               "endpointing need a program exported with voxtral-export --streaming")
        if endpointing and offline:
            raise ProgramError("endpointing is for live sessions; offline mode transcribes at flushes")
        instance, sampler = instance or self.instance(), Sampler(temperature, seed=seed)
        if self.spec.streaming:
            session = StreamingSession(self.spec, instance, self.prompt_embeds, sampler, max_new_tokens, token_ids,
                                       start=self.start_state)
        else:
            session = OfflineSession(self.spec, instance, self.prompt_embeds, sampler, max_new_tokens, token_ids)
        if offline and self.spec.streaming:
            return HeldAudioSession(session, max_offline_audio_s)
        if endpointing:
            return EndpointingSession(session, endpointing)
        return session

    def warm_up(self, instance: ModelInstance) -> None:
        """Runs every method once on silence so the first real request does not pay for initialisation."""
        session = self.session(instance)
        session.feed(np.zeros(int(WARMUP_SECONDS * self.spec.meta.sample_rate), dtype=np.float32))
        if isinstance(session, OfflineSession):
            session.flush()
