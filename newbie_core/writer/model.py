"""The encoder's Gemma as a causal LM: the same modules plus the last layer, the final norm and the tied head.

The text encoder stops one layer short of the top (NewBie reads ``hidden_states[-2]``), so the
writer needs exactly three more things: decoder layer ``n-1``, the final RMSNorm, and the output
head, which Gemma ties to the token embedding. :func:`extend_encoder` adds the first two to the
encoder itself (as ``encoder.generation_head``, so whoever moves the encoder between devices
moves them too) and builds a transformers ``Gemma3TextModel`` whose embedding and first ``n-1``
layers *are* the encoder's modules: one copy of every weight. Only the missing tensors are read,
lazily, from the file the encoder came from.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..text.gemma import GemmaTextEncoder, _materialise_buffers, _prefix, _text_config
from ..weights import QuantisedWeights, TensorReader, weight_files


def _layer_type(config, index: int) -> str:
    pattern = getattr(config, "_sliding_window_pattern", None) or getattr(config, "sliding_window_pattern", None) or 6
    return "sliding_attention" if (index + 1) % pattern else "full_attention"


def full_config(encoder_config):
    """The encoder's config with the top layer put back."""
    config = copy.deepcopy(encoder_config)
    n = encoder_config.num_hidden_layers
    config.num_hidden_layers = n + 1
    types = list(getattr(encoder_config, "layer_types", None) or [_layer_type(encoder_config, i) for i in range(n)])
    config.layer_types = types[:n] + [_layer_type(encoder_config, n)]
    return config


class GemmaWriterLM:
    """Next-token logits from a Gemma3 text model whose weights are shared, not owned.

    Deliberately not an ``nn.Module``: it must never be registered (and so counted, moved or
    saved) a second time; the encoder owns every parameter.
    """

    def __init__(self, lm: nn.Module, head: nn.Module | None):
        self.lm = lm
        self.head = head
        self.config = lm.config
        params = inspect.signature(lm.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    @property
    def device(self) -> torch.device:
        return self.lm.embed_tokens.weight.device

    @property
    def vocab_size(self) -> int:
        return self.lm.embed_tokens.weight.shape[0]

    def head_weight(self) -> torch.Tensor:
        return self.lm.embed_tokens.weight if self.head is None else self.head.weight

    def new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.config)

    @torch.no_grad()
    def next_logits(self, input_ids: torch.Tensor, cache=None) -> torch.Tensor:
        """Logits [vocab] for the token after ``input_ids`` [1, L]; with ``cache`` only new ids are passed."""
        kwargs = {self._cache_arg: cache, "use_cache": cache is not None}
        out = self.lm(input_ids=input_ids.to(self.device), **kwargs)
        hidden = out.last_hidden_state[0, -1]
        logits = F.linear(hidden, self.head_weight()).float()
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits


def _assemble(config, read: Callable[[str], torch.Tensor], shared: GemmaTextEncoder | None, device, dtype):
    """Meta-build the full model, reuse ``shared``'s modules, and ``read`` every other tensor."""
    from transformers import Gemma3TextModel

    with torch.device("meta"):
        lm = Gemma3TextModel(config)
    n = config.num_hidden_layers
    if shared is not None:
        lm.embed_tokens = shared.model.embed_tokens
        for i in range(n - 1):
            lm.layers[i] = shared.model.layers[i]
    own = {} if shared is not None else {"embed_tokens": lm.embed_tokens}
    own.update({f"layers.{i}": lm.layers[i] for i in range(0 if shared is None else n - 1, n)})
    own["norm"] = lm.norm
    for name, module in own.items():
        state = {}
        for key, meta in module.state_dict().items():
            full = f"{name}.{key}"
            tensor = read(full)
            if tuple(tensor.shape) != tuple(meta.shape):
                raise CheckpointError(f"Gemma key {full!r} has shape {list(tensor.shape)}, expected {list(meta.shape)}")
            state[key] = tensor.to(device=device, dtype=dtype or tensor.dtype)
        module.load_state_dict(state, strict=True, assign=True)
    head = None
    if not getattr(config, "tie_word_embeddings", True):
        with torch.device("meta"):
            head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        weight = read("lm_head.weight")
        head.load_state_dict({"weight": weight.to(device=device, dtype=dtype or weight.dtype)}, assign=True)
    _materialise_buffers(lm, config, device)
    return lm.eval().requires_grad_(False), head


def extend_encoder(encoder: GemmaTextEncoder, read: Callable[[str], torch.Tensor]) -> GemmaWriterLM:
    """Give ``encoder`` its top layer, final norm and head (read with ``read(hf_name)``); cached, read once."""
    cached = encoder.__dict__.get("_writer_lm")
    if cached is not None:
        return cached
    ref = encoder.model.embed_tokens.weight
    dtype = encoder.model.layers[0].mlp.down_proj.weight.dtype if len(encoder.model.layers) else ref.dtype
    lm, head = _assemble(full_config(encoder.config), read, encoder, ref.device, dtype)
    parts = {"last_layer": lm.layers[-1], "norm": lm.norm, "rotary": lm.rotary_emb}
    if head is not None:
        parts["lm_head"] = head
    encoder.generation_head = nn.ModuleDict(parts)
    writer = GemmaWriterLM(lm, head)
    encoder.__dict__["_writer_lm"] = writer
    return writer


def file_reader(path) -> Callable[[str], torch.Tensor]:
    """``read(hf_name)`` over a Gemma file or folder: opens headers only, reads each asked tensor once.

    Goes through the same dequantising reader as the encoder, so scaled-fp8 files give the weights
    they mean (and block-quantised ones are refused by name), exactly as for the other layers.
    """
    files, folder = weight_files(Path(path))
    reader = TensorReader.open(files)
    where = files[0] if len(files) == 1 else folder
    try:
        prefix = _prefix(reader.tensors)
    except CheckpointError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    weights = QuantisedWeights(reader, where)

    def read(name: str) -> torch.Tensor:
        key = prefix + name
        if key not in reader.tensors:
            raise CheckpointError(
                f"{where}: missing Gemma key {key!r}; the prompt writer needs the full model "
                "(this file seems to hold only the layers the image encoder uses)"
            )
        return weights.get(key)

    return read


def writer_for_encoder(encoder: GemmaTextEncoder, source=None) -> GemmaWriterLM:
    """The writer LM on ``encoder``; the missing tensors come from ``source`` (default: the file it was loaded from)."""
    cached = encoder.__dict__.get("_writer_lm")
    if cached is not None:
        return cached
    source = source if source is not None else getattr(encoder, "source", None)
    if source is None:
        raise CheckpointError(
            "this Gemma encoder does not know its weight file; the prompt writer cannot load its top layer"
        )
    return extend_encoder(encoder, file_reader(source))


def _config_from_shapes(shapes: dict, n_layers: int):
    """The encoder config the text package derives from key shapes alone (no config.json, no prefix)."""
    config, _assumed = _text_config(shapes, "", Path(os.devnull), n_layers, None, "Gemma weights")
    return config


def writer_from_state(state: Mapping[str, torch.Tensor]) -> GemmaWriterLM:
    """A writer LM over someone else's full Gemma weights (HF names, no prefix), sharing their storage."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    layers = {int(k.split(".")[1]) for k in shapes if k.startswith("layers.") and k.split(".")[1].isdigit()}
    if "embed_tokens.weight" not in shapes or not layers:
        raise CheckpointError("these Gemma weights have no token embedding or no decoder layers")
    try:
        config = full_config(_config_from_shapes(shapes, max(layers) + 1))
    except KeyError as exc:
        raise CheckpointError(f"missing Gemma key {exc.args[0]!r}") from None

    def read(name: str) -> torch.Tensor:
        if name not in state:
            raise CheckpointError(f"missing Gemma key {name!r}")
        return state[name]

    ref = state["embed_tokens.weight"]
    lm, head = _assemble(config, read, None, ref.device, None)
    return GemmaWriterLM(lm, head)
