"""Synthetic checkpoints in Mistral's exact on-disk format, for tests and benchmarks without the real weights.

`tiny` is the fixture of every test; `full` has the real shapes (~9 GB of bf16) for memory and speed measurements.
Values are random but scaled so activations stay in a sane range and greedy decoding yields varied tokens (small
token embeddings: large ones make the model repeat [STREAMING_PAD] forever). The weights are written tensor by tensor
straight into the safetensors layout, so even the full checkpoint needs little memory to write.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import sys
import time
import zlib
from pathlib import Path

import torch

from .checkpoint import checkpoint_key_map, expected_shapes
from .config import PARAMS_FILE, TOKENIZER_FILE, WEIGHTS_FILE, parse_params, parse_tokenizer, VoxtralConfig

N_SPECIAL = 1000
EXTRA_VOCAB_ENTRIES = 8  # the real tekken.json lists more vocab entries than the model uses; mimic the truncation
EMBEDDING_STD = 0.05
LINEAR_GAIN = 2.0
USED_SPECIAL_IDS = (1, 2, 32, 33)  # BOS, EOS, [STREAMING_PAD], [STREAMING_WORD]
UNUSED_SPECIAL_SCALE = 0.1
BYTE_TOKEN_SCALE = 0.3

# Real ids of the special tokens that matter (docs/spec.md §2.3); the others are placeholders as in tekken.json.
SPECIAL_NAMES = {0: "<unk>", 1: "<s>", 2: "</s>", 3: "[INST]", 4: "[/INST]", 5: "[AVAILABLE_TOOLS]",
                 6: "[/AVAILABLE_TOOLS]", 7: "[TOOL_RESULTS]", 8: "[/TOOL_RESULTS]", 9: "[TOOL_CALLS]", 10: "[IMG]",
                 11: "<pad>", 12: "[IMG_BREAK]", 13: "[IMG_END]", 14: "[PREFIX]", 15: "[MIDDLE]", 16: "[SUFFIX]",
                 17: "[SYSTEM_PROMPT]", 18: "[/SYSTEM_PROMPT]", 19: "[TOOL_CONTENT]", 24: "[AUDIO]",
                 25: "[BEGIN_AUDIO]", 26: "[OUTPUT_AUDIO]", 32: "[STREAMING_PAD]", 33: "[STREAMING_WORD]",
                 34: "[REPEAT_AUDIO_TEXT]"}

# Text pieces after the 256 single bytes: words with their leading space, and multi-byte UTF-8 characters, some of
# them split over two pieces so that detokenizers must reassemble characters across tokens.
WORDS = ("the of and to in is was that for on with as it he be at by this had not are but from or have an they "
         "which one you were her all she there would their we him been has when who will more no if out so said "
         "what up its about into than them can only other new some could time these two may then do first any my "
         "now such like our over man me even most made after also did many before must through back years where "
         "much your way well down should because each just those people mister quilter apostle middle classes "
         "glad welcome gospel hello world speech stream model voice audio token").split()
MULTIBYTE = ["é", "è", "ü", "ö", "ß", "ñ", "ç", "€", "日本", "語", "音声", "😀", "🎙", " café", " über", " naïve",
             " Zürich", " señor"]
SPLIT_PIECES = ["😀".encode()[:2], "😀".encode()[2:], "€".encode()[:1], "€".encode()[1:], "語".encode()[:2],
                "語".encode()[2:]]

TINY_PARAMS = dict(dim=96, n_layers=2, head_dim=32, hidden_dim=192, n_heads=4, n_kv_heads=2, vocab_size=1536,
                   sliding_window=8192, enc_dim=64, enc_n_layers=2, enc_head_dim=32, enc_hidden_dim=128,
                   enc_n_heads=4, enc_sliding_window=750)
FULL_PARAMS = dict(dim=3072, n_layers=26, head_dim=128, hidden_dim=9216, n_heads=32, n_kv_heads=8, vocab_size=131072,
                   sliding_window=8192, enc_dim=1280, enc_n_layers=32, enc_head_dim=64, enc_hidden_dim=5120,
                   enc_n_heads=32, enc_sliding_window=750)
DIMS = {"tiny": TINY_PARAMS, "full": FULL_PARAMS}


def params_json(dims: dict) -> dict:
    """params.json with every field of the real file (docs/spec.md §2.1)."""
    return {
        "dim": dims["dim"], "n_layers": dims["n_layers"], "head_dim": dims["head_dim"],
        "hidden_dim": dims["hidden_dim"], "n_heads": dims["n_heads"], "n_kv_heads": dims["n_kv_heads"],
        "use_biases": False, "causal": True, "rope_theta": 1000000.0, "norm_eps": 1e-05,
        "vocab_size": dims["vocab_size"], "model_parallel": 1, "tied_embeddings": True,
        "sliding_window": dims["sliding_window"], "model_max_length": 131072,
        "ada_rms_norm_t_cond": True, "ada_rms_norm_t_cond_dim": 32,
        "multimodal": {
            "whisper_model_args": {
                "encoder_args": {
                    "audio_encoding_args": {
                        "sampling_rate": 16000, "frame_rate": 12.5, "num_mel_bins": 128, "hop_length": 160,
                        "window_size": 400, "chunk_length_s": None, "global_log_mel_max": 1.5,
                        "transcription_format": "streaming",
                    },
                    "dim": dims["enc_dim"], "n_layers": dims["enc_n_layers"], "head_dim": dims["enc_head_dim"],
                    "hidden_dim": dims["enc_hidden_dim"], "n_heads": dims["enc_n_heads"],
                    "n_kv_heads": dims["enc_n_heads"], "vocab_size": dims["vocab_size"], "use_biases": True,
                    "use_cache": False, "rope_theta": 1000000.0, "causal": True, "norm_eps": 1e-05,
                    "pos_embed": "rope", "max_source_positions": None, "ffn_type": "swiglu",
                    "norm_type": "rms_norm", "sliding_window": dims["enc_sliding_window"],
                },
                "downsample_args": {"downsample_factor": 4},
            }
        },
    }


def vocab_pieces(n_pieces: int) -> list[bytes]:
    """Byte-level BPE-like vocabulary: the 256 bytes, then words, multi-byte and split pieces, then filler."""
    pieces = [bytes([b]) for b in range(256)]
    pieces += [(" " + w).encode() for w in WORDS] + [w.encode() for w in WORDS[:40]]
    pieces += [m.encode() for m in MULTIBYTE] + SPLIT_PIECES
    letters = "etaoinshrdlucmfwypvbgk"
    i = 0
    while len(pieces) < n_pieces:  # deterministic filler syllables for the full-size vocabulary
        a, b, c = letters[i % 22], letters[(i // 22) % 22], letters[(i // 484) % 22]
        pieces.append(f" {c}{b}{a}{i // 10648 or ''}".encode())
        i += 1
    return pieces[:n_pieces]


def tekken_json(vocab_size: int) -> dict:
    """tekken.json in the real layout: config, vocab (base64 bytes), 1000 special tokens, audio block."""
    n_used = vocab_size - N_SPECIAL
    if n_used < 256 + len(WORDS):
        raise ValueError(f"vocab_size {vocab_size} is too small for a byte-level vocabulary")
    vocab = []
    for rank, piece in enumerate(vocab_pieces(n_used + EXTRA_VOCAB_ENTRIES)):
        try:
            token_str = piece.decode("utf-8")
        except UnicodeDecodeError:
            token_str = None
        vocab.append({"rank": rank, "token_bytes": base64.b64encode(piece).decode("ascii"), "token_str": token_str})
    specials = [{"rank": i, "token_str": SPECIAL_NAMES.get(i, f"<SPECIAL_{i}>"), "is_control": True}
                for i in range(N_SPECIAL)]
    return {
        "config": {
            "pattern": r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
                       r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*"
                       r"|\s*[\r\n]+|\s+(?!\S)|\s+",
            "num_vocab_tokens": len(vocab),
            "default_vocab_size": vocab_size,
            "default_num_special_tokens": N_SPECIAL,
            "version": "v13",
        },
        "vocab": vocab,
        "special_tokens": specials,
        "audio": {
            "sampling_rate": 16000, "frame_rate": 12.5,
            "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
            "transcription_delay_ms": 480, "streaming_look_ahead_ms": 2.5, "streaming_look_back_ms": 52.5,
            "streaming_n_left_pad_tokens": 32, "transcription_format": "streaming",
        },
    }


def _init_std(key: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(mean, std) for a tensor, by its role."""
    if key.endswith("norm.weight"):
        return 1.0, 0.1
    if key.endswith(".bias"):
        return 0.0, 0.02
    if key.endswith("tok_embeddings.weight"):
        return 0.0, EMBEDDING_STD
    # Gain 2: with 1/sqrt(fan_in) the audio embeddings share one dominant direction and greedy decoding collapses
    # onto a single repeated token.
    return 0.0, LINEAR_GAIN / math.sqrt(math.prod(shape[1:]))


def _tensor(key: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    mean, std = _init_std(key, shape)
    values = torch.randn(shape, generator=generator) * std + mean
    if key.endswith("tok_embeddings.weight"):
        # Unused control tokens get small embeddings so that (tied) logits rarely pick them: random weights then
        # produce text pieces, [STREAMING_PAD]/[STREAMING_WORD] and EOS, like the real model's output mix.
        unused = torch.ones(N_SPECIAL, dtype=torch.bool)
        unused[list(USED_SPECIAL_IDS)] = False
        values[:N_SPECIAL][unused] *= UNUSED_SPECIAL_SCALE
        values[N_SPECIAL : N_SPECIAL + 256] *= BYTE_TOKEN_SCALE  # favour whole words over raw bytes
    return values.to(torch.bfloat16)


def write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], seed: int, progress: bool) -> None:
    """Writes bf16 tensors one at a time in the safetensors layout (8-byte header size, JSON header, raw data)."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, shape in shapes.items():
        size = math.prod(shape) * 2
        header[key] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    start, total = time.monotonic(), offset
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        written = 0
        for i, (key, shape) in enumerate(shapes.items()):
            data = _tensor(key, shape, seed).view(torch.int16).numpy().tobytes()
            f.write(data)
            written += len(data)
            if progress and (i % 50 == 0 or i == len(shapes) - 1):
                print(f"  weights {written / 2**30:6.2f} / {total / 2**30:.2f} GiB ({i + 1}/{len(shapes)} tensors, "
                      f"{time.monotonic() - start:.0f} s)", file=sys.stderr, flush=True)


def write_synthetic_checkpoint(out_dir: str | Path, dims: str = "tiny", seed: int = 0,
                               overrides: dict | None = None, progress: bool = False) -> Path:
    """Writes params.json, tekken.json and consolidated.safetensors into `out_dir`; returns it."""
    if dims not in DIMS:
        raise ValueError(f"unknown dims {dims!r}; expected one of {sorted(DIMS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = params_json({**DIMS[dims], **(overrides or {})})
    tekken = tekken_json(params["vocab_size"])
    encoder, decoder = parse_params(params)
    audio, tokens = parse_tokenizer(tekken)
    config = VoxtralConfig(encoder=encoder, decoder=decoder, audio=audio, tokens=tokens)
    shapes = expected_shapes(config)
    ordered = {key: shapes[key] for key in checkpoint_key_map(config)}
    (out / PARAMS_FILE).write_text(json.dumps(params, indent=2))
    (out / TOKENIZER_FILE).write_text(json.dumps(tekken, ensure_ascii=False))
    write_safetensors(out / WEIGHTS_FILE, ordered, seed, progress)
    return out
