"""Loading `consolidated.safetensors` with Mistral's real key names (docs/spec.md §3).

The model is built on the meta device, every checkpoint tensor is checked for presence and shape before anything is
read, then tensors are read one at a time from the memory-mapped file and cast to the target dtype, so peak memory
stays near the size of the loaded model. `load_model_lazily` leaves the layers unread until asked for one
(`LazyWeights.materialize`): the export quantizes each layer right after reading it, so the model never sits whole in
memory in the checkpoint's precision.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .config import WEIGHTS_FILE, VoxtralConfig, load_config
from .model import RuntimeOptions, VoxtralRealtime

MM_PREFIX = "mm_streams_embeddings.embedding_module."
ENCODER_PREFIX = MM_PREFIX + "whisper_encoder."


class CheckpointError(ValueError):
    """The weights file does not hold exactly the tensors this config needs."""


def checkpoint_key_map(config: VoxtralConfig) -> dict[str, str]:
    """Checkpoint key -> our module parameter name, for every tensor the checkpoint must hold."""
    keys: dict[str, str] = {}
    for i in range(2):
        for p in ("weight", "bias"):
            keys[f"{ENCODER_PREFIX}conv_layers.{i}.conv.{p}"] = f"encoder.conv_layers.{i}.conv.{p}"
    encoder_layer = ["attention_norm.weight", "attention.wq.weight", "attention.wq.bias", "attention.wk.weight",
                     "attention.wv.weight", "attention.wv.bias", "attention.wo.weight", "attention.wo.bias",
                     "ffn_norm.weight", "feed_forward.w1.weight", "feed_forward.w2.weight", "feed_forward.w2.bias",
                     "feed_forward.w3.weight"]
    for i in range(config.encoder.n_layers):
        for name in encoder_layer:
            keys[f"{ENCODER_PREFIX}transformer.layers.{i}.{name}"] = f"encoder.layers.{i}.{name}"
    keys[f"{ENCODER_PREFIX}transformer.norm.weight"] = "encoder.norm.weight"
    keys[f"{MM_PREFIX}audio_language_projection.0.weight"] = "adapter.0.weight"
    keys[f"{MM_PREFIX}audio_language_projection.2.weight"] = "adapter.2.weight"
    keys[f"{MM_PREFIX}tok_embeddings.weight"] = "decoder.tok_embeddings.weight"
    decoder_layer = ["attention_norm.weight", "attention.wq.weight", "attention.wk.weight", "attention.wv.weight",
                     "attention.wo.weight", "ffn_norm.weight", "feed_forward.w1.weight", "feed_forward.w2.weight",
                     "feed_forward.w3.weight", "ada_rms_norm_t_cond.0.weight", "ada_rms_norm_t_cond.2.weight"]
    for i in range(config.decoder.n_layers):
        for name in decoder_layer:
            keys[f"layers.{i}.{name}"] = f"decoder.layers.{i}.{name}"
    keys["norm.weight"] = "decoder.norm.weight"
    return keys


def expected_shapes(config: VoxtralConfig) -> dict[str, tuple[int, ...]]:
    """Checkpoint key -> shape, read off a meta-device model so shapes and module definitions cannot drift."""
    with torch.device("meta"):
        model = VoxtralRealtime(config)
    params = dict(model.named_parameters(remove_duplicate=False))
    return {key: tuple(params[name].shape) for key, name in checkpoint_key_map(config).items()}


def check_checkpoint(path: Path, config: VoxtralConfig) -> None:
    """Fails, naming the key, on a missing, unexpected or misshapen tensor; reads headers only."""
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    expected = expected_shapes(config)
    try:
        with safe_open(str(path), framework="pt") as f:
            present = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    missing = sorted(set(expected) - set(present))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{path}: missing tensor '{missing[0]}'{more}")
    unexpected = sorted(set(present) - set(expected))
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{path}: unexpected tensor '{unexpected[0]}'{more}; does params.json match?")
    for key, shape in expected.items():
        if present[key] != shape:
            raise CheckpointError(f"{path}: tensor '{key}' has shape {list(present[key])}, expected {list(shape)} "
                                  f"from params.json")


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, param_name = name.rpartition(".")
    module = model.get_submodule(module_name)
    setattr(module, param_name, nn.Parameter(tensor, requires_grad=False))


LAYER_PREFIXES = ("encoder.layers.", "adapter.", "decoder.layers.")  # what load_model_lazily leaves unread


class LazyWeights:
    """The checkpoint tensors of a model not read yet; `materialize` reads those of one submodule."""

    def __init__(self, model: VoxtralRealtime, path: Path, names: dict[str, str], dtype: torch.dtype):
        self._model, self._path, self._dtype = model, path, dtype
        self._unread = names  # parameter name -> checkpoint key

    def materialize(self, module: str) -> None:
        """Reads every unread parameter under the module path `module` (e.g. "decoder.layers.3"). The file is opened
        for each call: a read tensor is a view of that call's mapping, so once the layer's source-precision weights
        are dropped (quantized, say) its pages leave memory with them."""
        names = [n for n in self._unread if n.startswith(module + ".")]
        with safe_open(str(self._path), framework="pt") as f:
            for name in names:
                _assign(self._model, name, f.get_tensor(self._unread.pop(name)).to(self._dtype))

    def unread(self) -> list[str]:
        return list(self._unread)


def load_model(model_dir: str | Path, options: RuntimeOptions = RuntimeOptions(),
               config: VoxtralConfig | None = None) -> VoxtralRealtime:
    """Builds the model from a Mistral checkpoint directory (params.json, tekken.json, consolidated.safetensors)."""
    model, weights = load_model_lazily(model_dir, options, config)
    for prefix in LAYER_PREFIXES:
        weights.materialize(prefix.rstrip("."))
    return model


def load_model_lazily(model_dir: str | Path, options: RuntimeOptions = RuntimeOptions(),
                      config: VoxtralConfig | None = None) -> tuple[VoxtralRealtime, LazyWeights]:
    """Like `load_model`, but the encoder layers, the adapter and the decoder layers stay on the meta device until
    `materialize`d; everything else (embedding, convs, norms) is read now."""
    model_dir = Path(model_dir)
    config = config or load_config(model_dir)
    path = model_dir / WEIGHTS_FILE
    check_checkpoint(path, config)
    with torch.device("meta"):
        model = VoxtralRealtime(config, options)
    names = {name: key for key, name in checkpoint_key_map(config).items()}
    weights = LazyWeights(model, path, names, options.dtype)
    for module in sorted({n.rpartition(".")[0] for n in names if not n.startswith(LAYER_PREFIXES)}):
        weights.materialize(module)  # one read per module, not per tensor
    model.decoder.output.weight = model.decoder.tok_embeddings.weight  # re-tie: assignment broke the tie
    for module in model.modules():
        if hasattr(module, "init_buffers"):
            module.init_buffers()
    return model.eval(), weights
