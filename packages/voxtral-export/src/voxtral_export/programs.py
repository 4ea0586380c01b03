"""The methods of model.pte and preprocessor.pte, and their torch.export.

Every method takes and returns fp32 (and int64 positions/ids): a bf16 program casts inside, so the runtime never
needs to know the model dtype. Exports are strict: cache positions come from `.item()` on position tensors, which
strict mode turns into symbolic values instead of baking in the sample's value. The contract is in docs/pte.md.
"""

from __future__ import annotations

import torch
import torch.fx.experimental._config
from torch import nn
from torch.export import Dim, ExportedProgram, export

from voxtral_format.pte import (
    AUDIO_ENCODER,
    ENCODE_AUDIO_CHUNK,
    PREPROCESS,
    PREPROCESS_STREAM,
    TEXT_DECODER,
    TOKEN_EMBEDDING,
)
from voxtral_model.attention import RING_CHUNK
from voxtral_model.config import VoxtralConfig
from voxtral_model.encoder import ENCODER_BLOCK_FRAMES, StreamingEncoder
from voxtral_model.mel import LogMel, stream_window_samples
from voxtral_model.model import VoxtralRealtime


class ModelMethod(nn.Module):
    """One method of model.pte: a forward over the whole model whose argument names are the method's input names
    (torch.export's dynamic shapes name them); outputs are fp32 whatever the model computes in."""

    def __init__(self, model: VoxtralRealtime):
        super().__init__()
        self.model = model


class AudioEncoderMethod(ModelMethod):
    """mel (1, n_mels, 256k) -> audio embeddings (1, 32k, dim); pad the audio with silence to whole blocks."""

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.model.encode_audio(mel).float()


def max_encoder_steps(config: VoxtralConfig) -> int:
    """Most 80 ms steps one `encode_audio_chunk` call takes: the encoder frames of all of them (4 a step, the
    downsample factor) must fit one ring-cache call (attention.RING_CHUNK positions)."""
    return RING_CHUNK // config.encoder.downsample_factor


class EncodeAudioChunkMethod(nn.Module):
    """mel (1, n_mels, 8k) + encoder positions (4k,) -> k audio embeddings (1, k, dim), for 1 <= k <= 16 steps.

    The encoder is causal, so k steps in one call give what k calls give, while its weights are read once."""

    def __init__(self, step: StreamingEncoder):
        super().__init__()
        self.step = step

    def forward(self, mel_chunk: torch.Tensor, enc_input_pos: torch.Tensor) -> torch.Tensor:
        return self.step(mel_chunk, enc_input_pos).float()


class TextDecoderMethod(ModelMethod):
    """input_embeds (1, S, dim) + cache_position (S,) -> logits (1, 1, vocab) of the last position."""

    def forward(self, input_embeds: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
        return self.model.decode(input_embeds, cache_position, last_only=True).float()


class TokenEmbeddingMethod(ModelMethod):
    """token_ids (1, S) -> embeddings (1, S, dim)."""

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(token_ids).float()


class StreamWindowMethod(nn.Module):
    """One streaming step's samples (stream_window_samples,) -> its mel frames (1, n_mels, 8)."""

    def __init__(self, log_mel: LogMel):
        super().__init__()
        self.log_mel = log_mel

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        return self.log_mel.stream_window(window)


def encoder_block_mel_frames() -> int:
    """The offline audio encoder takes mel lengths in multiples of this (its attention runs in blocks)."""
    return 2 * ENCODER_BLOCK_FRAMES


def max_audio_tokens(config: VoxtralConfig, max_audio_len_s: float) -> int:
    """Tokens of the longest padded offline input: left pad + audio + alignment + right pad."""
    return (config.audio.n_left_pad_tokens + int(-(-max_audio_len_s * config.audio.frame_rate // 1))
            + config.right_pad_tokens)


def export_streaming_encoder(step: StreamingEncoder, config: VoxtralConfig) -> ExportedProgram:
    """`encode_audio_chunk`: 1 to max_encoder_steps 80 ms steps per call."""
    frames, enc_frames = config.mel_frames_per_token, config.encoder.downsample_factor  # per 80 ms step
    steps = Dim("encoder_steps", min=1, max=max_encoder_steps(config))
    # The sample takes several steps so that export does not specialise the step count.
    sample = (torch.zeros(1, config.encoder.num_mel_bins, frames * 2), torch.arange(2 * enc_frames, dtype=torch.int64))
    # Size-oblivious: the adapter's strided slices would otherwise make export guard on "steps != 1" (the sample has
    # 2 steps) and drop the one-step call; the code is the same for every step count.
    with torch.no_grad(), torch.fx.experimental._config.patch(backed_size_oblivious=True):
        return export(EncodeAudioChunkMethod(step), sample, strict=True,
                      dynamic_shapes={"mel_chunk": {2: frames * steps}, "enc_input_pos": {0: enc_frames * steps}})


def export_model_methods(model: VoxtralRealtime, streaming: bool, max_seq_len: int,
                         max_audio_len_s: float) -> dict[str, ExportedProgram]:
    """The programs of model.pte: the audio encoder (whole signal or one 80 ms step), decoder, embedding."""
    config, dim = model.config, model.config.decoder.dim
    frames = config.mel_frames_per_token
    n_mels = config.encoder.num_mel_bins
    longest_call = RING_CHUNK if streaming else max_seq_len  # a ring cache takes at most RING_CHUNK per call
    seq = Dim("seq_len", min=1, max=longest_call)
    programs: dict[str, ExportedProgram] = {}
    with torch.no_grad():
        if streaming:
            programs[ENCODE_AUDIO_CHUNK] = export_streaming_encoder(model.streaming_encoder(), config)
        else:
            block = encoder_block_mel_frames()
            most = max(-(-max_audio_tokens(config, max_audio_len_s) * frames // block), 3)
            blocks = Dim("encoder_blocks", min=1, max=most)
            # The sample spans several blocks so that export does not specialise the block count.
            programs[AUDIO_ENCODER] = export(AudioEncoderMethod(model), (torch.zeros(1, n_mels, block * min(8, most)),),
                                             dynamic_shapes={"mel": {2: block * blocks}}, strict=True)
        sample_len = min(4, longest_call)
        programs[TEXT_DECODER] = export(
            TextDecoderMethod(model), (torch.zeros(1, sample_len, dim), torch.arange(sample_len)),
            dynamic_shapes={"input_embeds": {1: seq}, "cache_position": {0: seq}}, strict=True)
        programs[TOKEN_EMBEDDING] = export(
            TokenEmbeddingMethod(model), (torch.ones(1, sample_len, dtype=torch.int64),),
            dynamic_shapes={"token_ids": {1: seq}}, strict=True)
    return programs


def state_buffer_names(programs: dict[str, ExportedProgram]) -> list[str]:
    """The buffers the methods write (KV caches, conv state), by the fully qualified names the .pte gives them: the
    runtime restores a shared start state into them by these names (docs/pte.md, `state_buffers`). The caches are
    written in place by operators whose schema marks the argument as written (llama.update_cache_with_indices,
    copy_), which torch.export leaves out of `buffers_to_mutate`; ExecuTorch plans both kinds as mutable state."""
    names: set[str] = set()
    for program in programs.values():
        buffers = program.graph_signature.inputs_to_buffers
        names |= set(program.graph_signature.buffers_to_mutate.values())
        for node in program.graph.nodes:
            schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
            if schema is None:
                continue
            values = dict(zip((a.name for a in schema.arguments), node.args)) | dict(node.kwargs)
            for argument in schema.arguments:
                value = values.get(argument.name)
                written = argument.alias_info is not None and argument.alias_info.is_write
                if written and isinstance(value, torch.fx.Node) and value.name in buffers:
                    names.add(buffers[value.name])
    return sorted(names)


def export_preprocessor_methods(config: VoxtralConfig, max_audio_len_s: float) -> dict[str, ExportedProgram]:
    """preprocessor.pte: the whole padded signal (a multiple of one token) and one streaming window."""
    log_mel = LogMel(config.encoder)
    tok = config.samples_per_token
    tokens = Dim("tokens", min=1, max=max_audio_tokens(config, max_audio_len_s))
    window = stream_window_samples(config.encoder, config.mel_frames_per_token)
    with torch.no_grad():
        return {
            PREPROCESS: export(log_mel, (torch.zeros(tok * 10),), dynamic_shapes={"waveform": {0: tok * tokens}},
                               strict=True),
            PREPROCESS_STREAM: export(StreamWindowMethod(log_mel), (torch.zeros(window),), strict=True),
        }
