"""HuggingFace transformers as a numerical oracle for our Voxtral Realtime port.

Why this exists: transformers 5.23 ships ``voxtral_realtime`` (an implementation written by
Hugging Face together with Mistral, independent of ours).  Our tests build small random checkpoints in
Mistral's exact on-disk format (``params.json`` + ``consolidated.safetensors`` + ``tekken.json``, see
``docs/spec.md`` §2-§3) and compare our mel front end, encoder, decoder and greedy loop against
the transformers model loaded from the *same* files.  This module does that loading (the transformers
weight-conversion script is not part of the wheel) and exposes the pieces one by one so tests do not have to
go through ``generate``.

Everything runs in fp32 on CPU.  The helpers are meant for tiny test checkpoints: the model is built with
randomly initialised weights first and then overwritten, which would be slow (and need ~2x16 GB) for the real
4B model.

Conventions handled here (docs/spec.md §3, §14.1):
- Mistral stores wq/wk rows in the interleaved-RoPE layout; transformers uses rotate-half RoPE, so wq, wk and
  the encoder wq bias are permuted per head ([head_dim/2, 2] -> [2, head_dim/2]).
- Encoder RoPE theta, both sliding windows, the ada-norm bottleneck, rms eps, head_dim, n_kv_heads and the
  vocab come from params.json (transformers' encoder default theta is 10 000 and its ada bottleneck is a
  hard-coded 32; both are overridden/checked).
- The output head is tied: ``lm_head.weight`` *is* ``embed_tokens.weight``.
- Attention runs with the "eager" implementation (explicit additive masks, fp32 softmax).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch import nn
from transformers import (
    VoxtralRealtimeConfig,
    VoxtralRealtimeEncoderConfig,
    VoxtralRealtimeFeatureExtractor,
    VoxtralRealtimeForConditionalGeneration,
    VoxtralRealtimeTextConfig,
)
from transformers.cache_utils import DynamicCache

MM = "mm_streams_embeddings.embedding_module."
ENC = MM + "whisper_encoder."

# Per-layer Mistral suffix -> HF suffix.
_ENC_LAYER_MAP = {
    "attention_norm.weight": "self_attn_layer_norm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wq.bias": "self_attn.q_proj.bias",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wv.bias": "self_attn.v_proj.bias",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "attention.wo.bias": "self_attn.o_proj.bias",
    "ffn_norm.weight": "final_layer_norm.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w2.bias": "mlp.down_proj.bias",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
}
_DEC_LAYER_MAP = {
    "attention_norm.weight": "input_layernorm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "ada_rms_norm_t_cond.0.weight": "ada_rms_norm.linear1.weight",
    "ada_rms_norm_t_cond.2.weight": "ada_rms_norm.linear2.weight",
}
_GLOBAL_MAP = {
    ENC + "conv_layers.0.conv.weight": "model.audio_tower.embedder.conv1.weight",
    ENC + "conv_layers.0.conv.bias": "model.audio_tower.embedder.conv1.bias",
    ENC + "conv_layers.1.conv.weight": "model.audio_tower.embedder.conv2.weight",
    ENC + "conv_layers.1.conv.bias": "model.audio_tower.embedder.conv2.bias",
    ENC + "transformer.norm.weight": "model.audio_tower.norm.weight",
    MM + "audio_language_projection.0.weight": "model.multi_modal_projector.linear_1.weight",
    MM + "audio_language_projection.2.weight": "model.multi_modal_projector.linear_2.weight",
    MM + "tok_embeddings.weight": "model.language_model.embed_tokens.weight",
    "norm.weight": "model.language_model.norm.weight",
}
# Mistral suffixes whose rows must be permuted to the rotate-half layout.
_ROPE_PERMUTED = ("attention.wq.weight", "attention.wq.bias", "attention.wk.weight")


def _params(model_dir: str | Path) -> dict:
    return json.loads((Path(model_dir) / "params.json").read_text())


def _audio_args(params: dict) -> dict:
    return params["multimodal"]["whisper_model_args"]["encoder_args"]["audio_encoding_args"]


def build_hf_config(params: dict, delay_tokens: int = 6) -> VoxtralRealtimeConfig:
    """transformers config from a Mistral params.json dict (every field of docs/spec.md §14.1 explicit)."""
    wma = params["multimodal"]["whisper_model_args"]
    enc = wma["encoder_args"]
    audio = enc["audio_encoding_args"]
    if not params.get("ada_rms_norm_t_cond", False):
        raise ValueError("transformers' VoxtralRealtime always has the ada norm; params.json disables it")
    if not params.get("tied_embeddings", True):
        raise ValueError("only tied embeddings are supported (the checkpoint has no output.weight)")
    if params.get("use_biases", False) or not enc.get("use_biases", True):
        raise ValueError("transformers hard-codes biases: encoder wq/wv/wo/w2 yes, decoder none")
    if enc.get("n_kv_heads", enc["n_heads"]) != enc["n_heads"]:
        raise ValueError("transformers' encoder is plain MHA (n_kv_heads == n_heads)")

    enc_window = enc.get("sliding_window")
    audio_config = VoxtralRealtimeEncoderConfig(
        hidden_size=enc["dim"],
        intermediate_size=enc["hidden_dim"],
        num_hidden_layers=enc["n_layers"],
        num_attention_heads=enc["n_heads"],
        head_dim=enc["head_dim"],
        num_mel_bins=audio.get("num_mel_bins", 128),
        rms_norm_eps=enc["norm_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": float(enc["rope_theta"])},
        sliding_window=int(enc_window) if enc_window is not None else None,
        hidden_act="silu",
        max_position_embeddings=1500,  # unused by default RoPE
        vocab_size=enc.get("vocab_size", params["vocab_size"]),
    )
    dec_window = params.get("sliding_window")
    text_config = VoxtralRealtimeTextConfig(
        vocab_size=params["vocab_size"],
        hidden_size=params["dim"],
        intermediate_size=params["hidden_dim"],
        num_hidden_layers=params["n_layers"],
        num_attention_heads=params["n_heads"],
        num_key_value_heads=params["n_kv_heads"],
        head_dim=params["head_dim"],
        rms_norm_eps=params["norm_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": float(params["rope_theta"])},
        sliding_window=int(dec_window) if dec_window is not None else None,
        max_position_embeddings=params.get("model_max_length", 131072),
        hidden_act="silu",
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    mel_frames_per_tok = round(audio["sampling_rate"] / audio["frame_rate"] / audio["hop_length"])
    return VoxtralRealtimeConfig(
        audio_config=audio_config,
        text_config=text_config,
        projector_hidden_act="gelu",  # exact erf GELU
        audio_length_per_tok=mel_frames_per_tok,
        default_num_delay_tokens=delay_tokens,
        downsample_factor=wma["downsample_args"]["downsample_factor"],
        tie_word_embeddings=True,
    )


def _permute_rotate_half(w: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Interleaved-RoPE rows -> rotate-half rows.

    Per head, view the rows as [head_dim/2, 2] and transpose to [2, head_dim/2] (works for weights and biases).
    """
    rest = w.shape[1:]
    n_heads = w.shape[0] // head_dim
    return w.reshape(n_heads, head_dim // 2, 2, *rest).transpose(1, 2).reshape(w.shape).contiguous()


def mistral_to_hf_state_dict(mistral: dict[str, torch.Tensor], params: dict) -> dict[str, torch.Tensor]:
    """Rename Mistral consolidated keys to transformers keys and permute wq/wk (+ encoder wq bias).

    Raises KeyError on any checkpoint key that has no HF counterpart.  ``lm_head.weight`` is set to the very
    same tensor as the token embedding (tied).
    """
    enc_hd = params["multimodal"]["whisper_model_args"]["encoder_args"]["head_dim"]
    dec_hd = params["head_dim"]
    out: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, tensor in mistral.items():
        if key in _GLOBAL_MAP:
            out[_GLOBAL_MAP[key]] = tensor
            continue
        for prefix, table, hf_prefix, head_dim in (
            (ENC + "transformer.layers.", _ENC_LAYER_MAP, "model.audio_tower.layers.", enc_hd),
            ("layers.", _DEC_LAYER_MAP, "model.language_model.layers.", dec_hd),
        ):
            if key.startswith(prefix):
                idx, _, suffix = key[len(prefix) :].partition(".")
                if suffix in table and idx.isdigit():
                    if suffix in _ROPE_PERMUTED:
                        tensor = _permute_rotate_half(tensor, head_dim)
                    out[f"{hf_prefix}{idx}.{table[suffix]}"] = tensor
                    break
        else:
            unexpected.append(key)
    if unexpected:
        raise KeyError(f"checkpoint keys with no transformers counterpart: {sorted(unexpected)}")
    out["lm_head.weight"] = out["model.language_model.embed_tokens.weight"]
    return out


def _load_consolidated(model_dir: str | Path) -> dict[str, torch.Tensor]:
    with safe_open(str(Path(model_dir) / "consolidated.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k).to(torch.float32) for k in f.keys()}


def load_hf_reference(model_dir: str | Path, delay_tokens: int = 6) -> VoxtralRealtimeForConditionalGeneration:
    """Build the transformers model (fp32, eval, CPU, eager attention) from a Mistral-format directory.

    Loading is strict: every HF parameter must come from the checkpoint and every checkpoint tensor must be
    used (otherwise KeyError/RuntimeError).  The ada-norm linears are resized when params.json's
    ``ada_rms_norm_t_cond_dim`` differs from transformers' hard-coded 32.  RoPE inverse frequencies of both
    stacks are checked against the params.json thetas.
    """
    params = _params(model_dir)
    config = build_hf_config(params, delay_tokens)
    model = VoxtralRealtimeForConditionalGeneration._from_config(
        config, attn_implementation="eager", dtype=torch.float32
    )
    ada_dim = params.get("ada_rms_norm_t_cond_dim", 32)
    for layer in model.model.language_model.layers:
        if layer.ada_rms_norm.linear1.out_features != ada_dim:
            layer.ada_rms_norm.linear1 = nn.Linear(params["dim"], ada_dim, bias=False)
            layer.ada_rms_norm.linear2 = nn.Linear(ada_dim, params["dim"], bias=False)

    state = mistral_to_hf_state_dict(_load_consolidated(model_dir), params)
    expected = set(model.state_dict().keys())
    missing, extra = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or extra:
        raise KeyError(f"HF state dict mismatch: missing={missing} unexpected={extra}")
    model.load_state_dict(state, strict=True)  # copies (shape-checked); keeps the lm_head tie
    if model.lm_head.weight.data_ptr() != model.model.language_model.embed_tokens.weight.data_ptr():
        raise RuntimeError("lm_head is not tied to embed_tokens")

    # Guard against silently falling back to transformers' defaults (e.g. encoder theta 10 000).
    enc = params["multimodal"]["whisper_model_args"]["encoder_args"]
    for rotary, theta, hd in (
        (model.model.audio_tower.rotary_emb, enc["rope_theta"], enc["head_dim"]),
        (model.model.language_model.rotary_emb, params["rope_theta"], params["head_dim"]),
    ):
        want = 1.0 / (float(theta) ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        torch.testing.assert_close(rotary.inv_freq, want)
    return model.to(torch.float32).eval()


def hf_feature_extractor(model_dir: str | Path) -> VoxtralRealtimeFeatureExtractor:
    """transformers' log-mel front end configured from params.json ``audio_encoding_args`` (fixed log-mel max)."""
    audio = _audio_args(_params(model_dir))
    return VoxtralRealtimeFeatureExtractor(
        feature_size=audio.get("num_mel_bins", 128),
        sampling_rate=audio.get("sampling_rate", 16000),
        hop_length=audio.get("hop_length", 160),
        n_fft=audio.get("window_size", 400),
        win_length=audio.get("window_size", 400),
        global_log_mel_max=audio.get("global_log_mel_max", 1.5),
    )


def hf_log_mel(model_dir: str | Path, waveform: np.ndarray) -> np.ndarray:
    """Log-mel (n_mels, F) of ``waveform`` exactly as given (already padded per docs/spec.md §7).

    With a single sequence and ``padding=False`` the feature extractor adds no samples; F = len // hop
    (center=True STFT, last frame dropped).
    """
    fe = hf_feature_extractor(model_dir)
    wav = np.asarray(waveform, dtype=np.float32)
    feats = fe(wav, sampling_rate=fe.sampling_rate, padding=False, return_tensors="pt")["input_features"]
    mel = feats[0].numpy().astype(np.float32)
    assert mel.shape == (fe.feature_size, len(wav) // fe.hop_length), mel.shape
    return mel


@torch.no_grad()
def hf_audio_embeddings(model: VoxtralRealtimeForConditionalGeneration, mel: torch.Tensor) -> torch.Tensor:
    """Offline audio embeddings (n_tok, text_dim): conv stem + encoder + 4x downsample + projector.

    Calls ``model.model.get_audio_features(input_features=mel, use_cache=False)``: without caches the causal
    convs left-pad with zeros (conv1: 2, conv2: 1) and the encoder runs all T_enc = F/2 frames at once with
    positions 0..T_enc-1 and a causal mask restricted to ``audio_config.sliding_window`` (a key j is visible to
    query i iff 0 <= i - j < window).  F must be a multiple of 2 * downsample_factor.
    """
    mel = torch.as_tensor(mel, dtype=torch.float32)
    if mel.dim() == 2:
        mel = mel[None]
    step = 2 * model.config.downsample_factor
    if mel.shape[-1] % step:
        raise ValueError(f"mel frame count {mel.shape[-1]} is not a multiple of {step}")
    out = model.model.get_audio_features(input_features=mel, use_cache=False, return_dict=True)
    return out.pooler_output[0]


def hf_t_cond(model: VoxtralRealtimeForConditionalGeneration, delay_tokens: int = 6) -> torch.Tensor:
    """Time conditioning (1, dim) in fp32, built like ``VoxtralRealtimeModel.forward`` does.

    The decoder layers take it as the ``t_cond`` keyword (forwarded through the text model's **kwargs).
    """
    t = torch.full((1,), float(delay_tokens), dtype=torch.float32)
    return model.model.time_embedding(t)[None, ...]


def _decoder_step(model, embeds: torch.Tensor, positions: torch.Tensor, t_cond, cache) -> torch.Tensor:
    """Run the text decoder on (1, S, dim) input embeddings at explicit positions; returns (S, vocab) logits.

    ``VoxtralRealtimeModel.forward`` insists on audio input, so the decoder is called directly:
    ``model.model.language_model(inputs_embeds=..., position_ids=..., t_cond=..., past_key_values=...)``
    followed by the tied ``model.lm_head``.
    """
    out = model.model.language_model(
        inputs_embeds=embeds,
        position_ids=positions[None],
        past_key_values=cache,
        use_cache=cache is not None,
        t_cond=t_cond,
    )
    return model.lm_head(out.last_hidden_state)[0]


@torch.no_grad()
def hf_decoder_logits(
    model: VoxtralRealtimeForConditionalGeneration,
    audio_embeds: torch.Tensor,
    token_ids: list[int],
    delay_tokens: int = 6,
) -> torch.Tensor:
    """Teacher-forced logits (len(token_ids), vocab): input at position p is audio_embeds[p] + E[token_ids[p]].

    One full-sequence call, positions 0..len-1, no cache, decoder sliding window from params.json.
    """
    n = len(token_ids)
    if n > audio_embeds.shape[0]:
        raise ValueError(f"{n} tokens but only {audio_embeds.shape[0]} audio embeddings")
    ids = torch.tensor(token_ids, dtype=torch.long)
    embeds = audio_embeds[:n].float() + model.model.language_model.embed_tokens(ids)
    return _decoder_step(model, embeds[None], torch.arange(n), hf_t_cond(model, delay_tokens), None)


@torch.no_grad()
def hf_greedy_transcribe_ids(
    model: VoxtralRealtimeForConditionalGeneration,
    audio_embeds: torch.Tensor,
    prompt_ids: list[int],
    eos_id: int,
    delay_tokens: int | None = None,
) -> list[int]:
    """Greedy decode per docs/spec.md §7 steps 5-7 with the transformers decoder and a DynamicCache.

    Prefill positions 0..L-1 (L = len(prompt_ids), 39 for the real prompt) in one call; the argmax at
    position L-1 is the first sampled id.  Then positions L..n_tok-1 one at a time, feeding back the previous
    argmax, stopping at EOS.  Unlike ``generate`` (which clamps max_length to n_tok and therefore never runs
    position n_tok-1), the last position *is* run and its argmax kept: at most n_tok-L+1 ids, EOS excluded.
    ``delay_tokens`` defaults to ``model.config.default_num_delay_tokens`` (set by ``load_hf_reference``).
    """
    if delay_tokens is None:
        delay_tokens = model.config.default_num_delay_tokens
    n_tok, n_prompt = audio_embeds.shape[0], len(prompt_ids)
    if n_prompt > n_tok:
        raise ValueError(f"prompt of {n_prompt} tokens but only {n_tok} audio embeddings")
    embed = model.model.language_model.embed_tokens
    t_cond = hf_t_cond(model, delay_tokens)
    cache = DynamicCache(config=model.config.text_config)
    audio = audio_embeds.float()

    ids = torch.tensor(prompt_ids, dtype=torch.long)
    logits = _decoder_step(model, (audio[:n_prompt] + embed(ids))[None], torch.arange(n_prompt), t_cond, cache)
    tok = int(logits[-1].argmax())
    out: list[int] = []
    for p in range(n_prompt, n_tok + 1):
        if tok == eos_id:
            break
        out.append(tok)
        if p == n_tok:
            break
        e = audio[p : p + 1] + embed(torch.tensor([tok]))
        tok = int(_decoder_step(model, e[None], torch.tensor([p]), t_cond, cache)[-1].argmax())
    return out
