"""Gemma3-4B-it text path, as NewBie conditioning uses it.

Training took ``hidden_states[-2]`` of the full model: the output of the second-to-last
decoder layer, *before* the final norm. So only layers ``0 .. n-2`` are built and run, and the
final norm is skipped: one layer (94M parameters) is never loaded. The transformer itself is
transformers' ``Gemma3TextModel``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..file_kinds import GEMMA3, wrong_file_hint
from ..weights import QuantisedWeights, TensorReader, shard_position, weight_files
from .tokenizers import SentencePieceTokenizer, Tokenizer, tokenizer_from_folder

#: Text config of google/gemma-3-4b-it (legacy key names; transformers converts them).
GEMMA3_4B_TEXT = dict(
    vocab_size=262208,
    hidden_size=2560,
    intermediate_size=10240,
    num_hidden_layers=34,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    rms_norm_eps=1e-6,
    rope_theta=1_000_000.0,
    rope_local_base_freq=10_000.0,
    rope_scaling={"rope_type": "linear", "factor": 8.0},
    sliding_window=1024,
    query_pre_attn_scalar=256,
    max_position_embeddings=131072,
)

log = logging.getLogger("newbie")

_PREFIXES = ("model.language_model.", "language_model.model.", "language_model.", "model.", "")
_SKIP = re.compile(r"^(vision_tower|vision_model|multi_modal_projector|lm_head)\.|^spiece_model$")


def _prefix(keys) -> str:
    for p in _PREFIXES:
        if p + "embed_tokens.weight" in keys:
            return p
    raise CheckpointError("no 'embed_tokens.weight' key: this is not a Gemma3 text-encoder file")


class GemmaTextEncoder(nn.Module):
    """Gemma3 decoder truncated to the layer NewBie reads; returns un-normalised hidden states."""

    def __init__(self, config):
        super().__init__()
        from transformers import Gemma3TextModel

        self.config = config
        self.model = Gemma3TextModel(config)
        self.model.norm = nn.Identity()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state


def _read_config(folder: Path) -> dict | None:
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable config.json ({exc})") from None
    text = raw.get("text_config", raw)
    if not isinstance(text, dict):
        return None
    kind = text.get("model_type", raw.get("model_type"))
    if kind is not None and kind not in ("gemma3", "gemma3_text"):
        log.info("ignoring %s: it describes a %r model, not Gemma3", path, kind)
        return None
    return dict(text)


def _span(layers) -> str:
    """``3, 5-9`` for a sorted list of layer numbers."""
    out, run = [], []
    for i in sorted(layers):
        if run and i != run[-1] + 1:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(i)
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out)


def _check_depth(where, files, layer_ids: set[int], stated: int | None, hidden: int) -> int:
    """The model's full depth; refuses a partial set (one shard, gaps), naming the missing layers."""
    expected = stated
    source = "config.json"
    if expected is None and hidden == GEMMA3_4B_TEXT["hidden_size"]:
        expected, source = GEMMA3_4B_TEXT["num_hidden_layers"], "Gemma3-4B"
    needed = set(range((expected or max(layer_ids) + 1) - 1))  # the last layer is never run
    missing = sorted(needed - layer_ids)
    shard = shard_position(files[0]) if len(files) == 1 else None
    if not missing and expected is None and shard and shard[1] > 1:
        raise CheckpointError(
            f"{where}: this is shard {shard[0]} of {shard[1]} of a sharded Gemma with no "
            "model.safetensors.index.json beside it; it holds only layers "
            f"{_span(layer_ids)}; put the whole folder (all shards and the index) in place"
        )
    if missing:
        hint = (
            f"; it is shard {shard[0]} of {shard[1]}: put all shards and model.safetensors.index.json beside it"
            if shard
            else ""
        )
        raise CheckpointError(
            f"{where}: Gemma decoder layers {_span(missing)} are missing ({source} states {expected} layers, "
            f"the file holds {_span(layer_ids)}){hint}"
        )
    return expected or max(layer_ids) + 1


def _text_config(shapes: dict, prefix: str, folder: Path, n_layers: int, stated: dict | None, where):
    """Gemma3TextConfig for layers ``0 .. n_layers-2``: config.json wins wherever it states something.

    Shapes give the sizes; without a config.json the 4B model's published values are used (and said).
    """
    from transformers import Gemma3TextConfig

    vocab, hidden = shapes[prefix + "embed_tokens.weight"]
    head_dim = shapes[prefix + "layers.0.self_attn.q_norm.weight"][0]
    from_shapes = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=shapes[prefix + "layers.0.mlp.gate_proj.weight"][0],
        num_attention_heads=shapes[prefix + "layers.0.self_attn.q_proj.weight"][0] // head_dim,
        num_key_value_heads=shapes[prefix + "layers.0.self_attn.k_proj.weight"][0] // head_dim,
        head_dim=head_dim,
    )
    assumed = []
    if stated is not None:
        values = dict(stated)
        for key, value in from_shapes.items():
            if key in values and values[key] != value:
                raise CheckpointError(
                    f"{where}: config.json states {key} = {values[key]} but the weights have {value}; "
                    "the config belongs to another model"
                )
            values.setdefault(key, value)
    else:
        values = dict(GEMMA3_4B_TEXT, **from_shapes)
        if hidden != GEMMA3_4B_TEXT["hidden_size"]:
            values["query_pre_attn_scalar"] = head_dim
            assumed.append(f"query_pre_attn_scalar = head_dim {head_dim} (not the 4B model, no config.json)")
        assumed.append("Gemma3-4B's sliding window, RoPE and layer pattern (no config.json beside the file)")
    values["num_hidden_layers"] = n_layers
    full = Gemma3TextConfig(**{k: v for k, v in values.items() if k not in ("architectures", "auto_map")})
    layer_types = list(full.layer_types)[: n_layers - 1]
    values["num_hidden_layers"] = n_layers - 1
    values["layer_types"] = layer_types
    config = Gemma3TextConfig(**{k: v for k, v in values.items() if k not in ("architectures", "auto_map")})
    config._attn_implementation = "sdpa"
    return config, assumed


def _materialise_buffers(module: nn.Module, config, device) -> None:
    """Non-persistent buffers (RoPE frequencies, embedding scale) are not in checkpoints: rebuild them."""
    for name, child in list(module.named_modules()):
        meta = [b for b in child.buffers(recurse=False) if b.is_meta]
        if not meta:
            continue
        if hasattr(child, "config") and "Rotary" in type(child).__name__:
            parent_name, _, attr = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, attr, type(child)(config=child.config, device=device))
        elif hasattr(child, "embed_scale"):
            child.embed_scale = torch.tensor(config.hidden_size**0.5, device=device)
    left = [n for n, b in module.named_buffers() if b.is_meta]
    if left:
        raise RuntimeError(f"could not rebuild buffers {left} for this transformers version")


def load_gemma(path, dtype: torch.dtype | None = None, device="cpu") -> tuple[GemmaTextEncoder, Tokenizer]:
    """Gemma3 text encoder + tokenizer from a ComfyUI single file or an official HF folder."""
    path = Path(path)
    files, folder = weight_files(path)
    reader = TensorReader.open(files)
    where = files[0] if len(files) == 1 else folder
    try:
        prefix = _prefix(reader.tensors)
    except CheckpointError as exc:
        shard = shard_position(files[0]) if len(files) == 1 else None
        layers = {int(m.group(1)) for k in reader.tensors if (m := re.search(r"layers\.(\d+)\.self_attn\.", k))}
        if shard and layers:
            raise CheckpointError(
                f"{where}: this is shard {shard[0]} of {shard[1]} of a sharded Gemma with no "
                f"model.safetensors.index.json beside it; it holds only layers {_span(layers)}; "
                "put the whole folder (all shards and the index) in place"
            ) from None
        hint = wrong_file_hint(GEMMA3, {k: v.shape for k, v in reader.tensors.items()})
        raise CheckpointError(f"{where}: {exc}{hint}") from None
    shapes = {k: info.shape for k, info in reader.tensors.items()}
    layer_ids = {int(m.group(1)) for k in shapes if (m := re.match(re.escape(prefix) + r"layers\.(\d+)\.", k))}
    if len(layer_ids) < 2:
        raise CheckpointError(f"{where}: Gemma file has {len(layer_ids)} decoder layers; at least 2 are needed")
    stated = _read_config(folder)
    weights = QuantisedWeights(reader, where)
    try:
        hidden = shapes[prefix + "embed_tokens.weight"][1]
        n_layers = _check_depth(where, files, layer_ids, (stated or {}).get("num_hidden_layers"), hidden)
        config, assumed = _text_config(shapes, prefix, folder, n_layers, stated, where)
    except KeyError as exc:
        raise CheckpointError(f"{where}: missing Gemma key {exc.args[0]!r}") from None
    if assumed:
        log.info("Gemma %s: assumed %s", where, "; ".join(assumed))

    with torch.device("meta"):
        encoder = GemmaTextEncoder(config)
    expected = encoder.model.state_dict()
    state = {}
    for name, meta in expected.items():
        key = prefix + name
        if key not in reader.tensors:
            raise CheckpointError(f"{where}: missing Gemma key {key!r}")
        if tuple(reader.shape(key)) != tuple(meta.shape):
            raise CheckpointError(
                f"{where}: Gemma key {key!r} has shape {list(reader.shape(key))}, expected {list(meta.shape)}"
            )
        tensor = weights.get(key)
        stored = reader.tensors[key].dtype
        if dtype is None and (weights.quantised or stored.startswith("F8")):
            dtype = torch.bfloat16  # fp8 storage computes in bf16 (exact for plain fp8)
        state[name] = tensor.to(device=device, dtype=dtype or tensor.dtype)
    encoder.model.load_state_dict(state, strict=True, assign=True)
    _materialise_buffers(encoder.model, config, device)

    if "spiece_model" in reader.tensors:
        blob = reader.get("spiece_model").numpy().tobytes()
        tokenizer = SentencePieceTokenizer(blob, add_bos=True, add_eos=False, source=f"{where} (spiece_model)")
    else:
        tokenizer = tokenizer_from_folder(folder, True, False, ("<bos>", "<eos>", "<pad>"))
    reader.close()
    if tokenizer is None:
        raise CheckpointError(
            f"{where}: no Gemma tokenizer found (no embedded 'spiece_model' and no tokenizer.json/tokenizer.model beside it)"
        )
    return encoder.eval().requires_grad_(False), tokenizer
