"""Gemma3-4B-it text path, as NewBie conditioning uses it.

Training took ``hidden_states[-2]`` of the full model: the output of the second-to-last
decoder layer, *before* the final norm. So only layers ``0 .. n-2`` are built and run, and the
final norm is skipped: one layer (94M parameters) is never loaded. The transformer itself is
transformers' ``Gemma3TextModel``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..weights import TensorReader, weight_files
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


def _text_config(shapes: dict, prefix: str, folder: Path, n_layers: int):
    from transformers import Gemma3TextConfig

    hints = dict(GEMMA3_4B_TEXT)
    has_config = (folder / "config.json").is_file()
    if has_config:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        hints.update(raw.get("text_config", raw))
    vocab, hidden = shapes[prefix + "embed_tokens.weight"]
    head_dim = shapes[prefix + "layers.0.self_attn.q_norm.weight"][0]
    inferred = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=shapes[prefix + "layers.0.mlp.gate_proj.weight"][0],
        num_hidden_layers=n_layers - 1,
        num_attention_heads=shapes[prefix + "layers.0.self_attn.q_proj.weight"][0] // head_dim,
        num_key_value_heads=shapes[prefix + "layers.0.self_attn.k_proj.weight"][0] // head_dim,
        head_dim=head_dim,
    )
    if not has_config and hidden != GEMMA3_4B_TEXT["hidden_size"]:
        inferred["query_pre_attn_scalar"] = head_dim  # not the 4B model and no config: Gemma's usual choice
    hints.update(inferred)
    hints.pop("layer_types", None)  # recomputed for the truncated depth from the sliding-window pattern
    known = set(Gemma3TextConfig().to_dict()) | {"rope_theta", "rope_local_base_freq", "rope_scaling"}
    config = Gemma3TextConfig(**{k: v for k, v in hints.items() if k in known})
    config._attn_implementation = "sdpa"
    return config


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
        hint = ""
        if any(".mixer.Wqkv." in k for k in reader.tensors):
            hint = " (it looks like the Jina CLIP file; the two inputs are swapped)"
        raise CheckpointError(f"{where}: {exc}{hint}") from None
    shapes = {k: info.shape for k, info in reader.tensors.items()}
    layer_ids = {int(m.group(1)) for k in shapes if (m := re.match(re.escape(prefix) + r"layers\.(\d+)\.", k))}
    n_layers = max(layer_ids) + 1 if layer_ids else 0
    if n_layers < 2:
        raise CheckpointError(f"{where}: Gemma file has {n_layers} decoder layers; at least 2 are needed")
    try:
        config = _text_config(shapes, prefix, folder, n_layers)
    except KeyError as exc:
        raise CheckpointError(f"{where}: missing Gemma key {exc.args[0]!r}") from None

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
        tensor = reader.get(key)
        state[name] = tensor.to(device=device, dtype=dtype or tensor.dtype)
    encoder.model.load_state_dict(state, strict=True, assign=True)
    _materialise_buffers(encoder.model, config, device)
    encoder.source = path  # the prompt writer reads the top layer from here, lazily and only on demand

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
