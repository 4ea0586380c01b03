"""The whole network: encoder + adapter (audio -> one embedding per 80 ms token) and the text decoder.

The three entry points are the methods an exported program offers: `encode_audio` (offline audio encoder),
`embed_tokens`, `decode`; `streaming_encoder()` builds the stateful 80 ms encoder step over the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import LAYOUTS, require_custom_ops
from .config import VoxtralConfig
from .decoder import Decoder
from .encoder import Adapter, Encoder, StreamingEncoder

DEFAULT_MAX_SEQ_LEN = 4096


@dataclass(frozen=True)
class RuntimeOptions:
    """How the model is instantiated for a backend; none of this is in the checkpoint."""

    layout: str = "standard"  # "custom" (ExecuTorch llama ops: XNNPACK, portable) or "standard" (Metal, plain torch)
    streaming: bool = False  # ring KV cache for unbounded streams instead of a flat max_seq_len cache
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN  # flat-cache size (offline) and longest decoder call
    delay_tokens: int | None = None  # None: the delay of tekken.json
    decoder_window: int | None = None  # None: params.json sliding_window; smaller shrinks the streaming ring cache
    encoder_window: int | None = None  # None: params.json encoder sliding_window (750)
    dtype: torch.dtype = torch.float32
    # Element type of the streaming ring KV caches (None: dtype). bfloat16 halves what a live step scans; keys and
    # values are rounded to it when written and attended in float32 (docs/model.md, "KV caches").
    ring_cache_dtype: torch.dtype | None = None

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown attention layout {self.layout!r}; expected one of {LAYOUTS}")


class VoxtralRealtime(nn.Module):
    def __init__(self, config: VoxtralConfig, options: RuntimeOptions = RuntimeOptions()):
        super().__init__()
        if options.layout == "custom":
            require_custom_ops()
        self.config, self.options = config, options
        delay = options.delay_tokens if options.delay_tokens is not None else config.delay_tokens
        self.delay_tokens = delay
        self.encoder = Encoder(config.encoder)
        self.adapter = Adapter(config.encoder, config.decoder.dim)
        self.decoder = Decoder(config.decoder, delay, options.layout, options.max_seq_len, options.streaming,
                               options.decoder_window, options.dtype, options.ring_cache_dtype)

    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """Offline: mel (1, n_mels, 8k) -> audio embeddings (1, k, dim)."""
        return self.adapter(self.encoder(mel))

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(1, S) int64 -> (1, S, dim)."""
        return self.decoder.tok_embeddings(token_ids)

    def decode(self, input_embeds: torch.Tensor, positions: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """(1, S, dim) summed audio + token embeddings at `positions` (S,) -> logits (1, S, vocab), or (1, 1, vocab)
        of the last position with `last_only`."""
        return self.decoder(input_embeds, positions, last_only)

    def streaming_encoder(self) -> StreamingEncoder:
        """A stateful 80 ms encoder step sharing this model's weights (its caches are its own)."""
        return StreamingEncoder(self.encoder, self.adapter, self.options.layout, self.options.encoder_window,
                                self.options.ring_cache_dtype)
