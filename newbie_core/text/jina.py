"""Jina CLIP v2 text tower, native (no remote code): the pooled vector NewBie's adaLN consumes.

Architecture (Jina's XLM-RoBERTa): word + token-type embeddings (no absolute positions),
LayerNorm, post-LN blocks with fused-qkv attention and rotate-half RoPE (base 20000), GELU
MLP; the pooled output is the mean of the last layer's states over all non-pad tokens
(``<s>`` and ``</s>`` included), not normalised, not projected.

Files: ComfyUI's repackaged file (keys under ``model.``, tokenizer in ``spiece_model``) or the
official HF folder (keys under ``text_model.transformer.``, tokenizer.json). When a file carries
the task LoRA adapters (torch parametrizations ``lora_A``/``lora_B``), the adapter of the
default task ``retrieval.query`` is merged, as the reference ``get_text_features`` applies it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..weights import TensorReader, weight_files
from .tokenizers import SentencePieceTokenizer, Tokenizer, tokenizer_from_folder

DEFAULT_LORA_TASKS = ["retrieval.query", "retrieval.passage", "separation", "classification", "text-matching"]
DEFAULT_TASK = "retrieval.query"


@dataclass(frozen=True)
class JinaTextConfig:
    vocab_size: int = 250002
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    rotary_base: float = 20000.0
    pad_token_id: int = 1


class _Embeddings(nn.Module):
    def __init__(self, cfg: JinaTextConfig, operations, device, dtype):
        super().__init__()
        self.word_embeddings = operations.Embedding(cfg.vocab_size, cfg.hidden_size, device=device, dtype=dtype)
        self.token_type_embeddings = operations.Embedding(
            cfg.type_vocab_size, cfg.hidden_size, device=device, dtype=dtype
        )


class _Mixer(nn.Module):
    def __init__(self, cfg: JinaTextConfig, operations, device, dtype):
        super().__init__()
        self.Wqkv = operations.Linear(cfg.hidden_size, 3 * cfg.hidden_size, device=device, dtype=dtype)
        self.out_proj = operations.Linear(cfg.hidden_size, cfg.hidden_size, device=device, dtype=dtype)


class _MLP(nn.Module):
    def __init__(self, cfg: JinaTextConfig, operations, device, dtype):
        super().__init__()
        self.fc1 = operations.Linear(cfg.hidden_size, cfg.intermediate_size, device=device, dtype=dtype)
        self.fc2 = operations.Linear(cfg.intermediate_size, cfg.hidden_size, device=device, dtype=dtype)


class _Block(nn.Module):
    def __init__(self, cfg: JinaTextConfig, operations, device, dtype):
        super().__init__()
        self.mixer = _Mixer(cfg, operations, device, dtype)
        self.norm1 = operations.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, device=device, dtype=dtype)
        self.mlp = _MLP(cfg, operations, device, dtype)
        self.norm2 = operations.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, device=device, dtype=dtype)


class _Encoder(nn.Module):
    def __init__(self, cfg: JinaTextConfig, operations, device, dtype):
        super().__init__()
        self.layers = nn.ModuleList(_Block(cfg, operations, device, dtype) for _ in range(cfg.num_layers))


def _rotate_half_rope(x: torch.Tensor, base: float) -> torch.Tensor:
    """Rotate-half RoPE over the full head dim for x [B, H, S, D], positions 0..S-1, math in float32."""
    d = x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d))
    angles = torch.outer(torch.arange(x.shape[-2], device=x.device, dtype=torch.float32), inv_freq)
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1)
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1)
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    x1, x2 = xf[..., : d // 2], xf[..., d // 2 :]
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * cos.to(xf.dtype) + rotated * sin.to(xf.dtype)).to(x.dtype)


class JinaTextModel(nn.Module):
    """Returns the mean-pooled text embedding [B, hidden] (NewBie's ``clip_text_pooled``)."""

    def __init__(self, config: JinaTextConfig = JinaTextConfig(), operations=nn, device=None, dtype=None):
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config, operations, device, dtype)
        self.emb_ln = operations.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, device=device, dtype=dtype)
        self.encoder = _Encoder(config, operations, device, dtype)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        x = self.embeddings.word_embeddings(input_ids)
        x = x + self.embeddings.token_type_embeddings(torch.zeros_like(input_ids))
        x = self.emb_ln(x)
        b, s, _ = x.shape
        heads, head_dim = cfg.num_heads, cfg.hidden_size // cfg.num_heads
        key_mask = attention_mask.bool()[:, None, None, :]
        for block in self.encoder.layers:
            q, k, v = block.mixer.Wqkv(x).view(b, s, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
            q = _rotate_half_rope(q, cfg.rotary_base)
            k = _rotate_half_rope(k, cfg.rotary_base)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
            attn = block.mixer.out_proj(attn.transpose(1, 2).reshape(b, s, cfg.hidden_size))
            x = block.norm1(attn + x)
            x = block.norm2(block.mlp.fc2(F.gelu(block.mlp.fc1(x))) + x)
        return x

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.hidden_states(input_ids, attention_mask)
        weights = attention_mask.to(states.dtype)[..., None]
        return (states * weights).sum(dim=1) / weights.sum(dim=1)


# ------------------------------------------------------------------------------------ loading

_PREFIXES = ("model.", "text_model.transformer.", "transformer.", "roberta.", "")


def _prefix(keys) -> str:
    for p in _PREFIXES:
        for suffix in (
            "embeddings.word_embeddings.weight",
            "embeddings.word_embeddings.parametrizations.weight.original",
        ):
            if p + suffix in keys:
                return p
    raise CheckpointError("no 'embeddings.word_embeddings.weight' key: this is not a Jina CLIP v2 text file")


def _lora_settings(folder: Path) -> tuple[list[str], float]:
    tasks, alpha = list(DEFAULT_LORA_TASKS), 1.0
    if (folder / "config.json").is_file():
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        text_cfg = raw.get("text_config", {})
        kwargs = text_cfg.get("hf_model_config_kwargs", {}) if isinstance(text_cfg, dict) else {}
        for source in (raw, text_cfg, kwargs):
            if isinstance(source, dict):
                tasks = source.get("lora_adaptations", tasks)
                alpha = float(source.get("lora_alpha", alpha))
    return tasks, alpha


def load_jina(
    path, dtype: torch.dtype | None = None, device="cpu", task: str = DEFAULT_TASK
) -> tuple[JinaTextModel, Tokenizer, dict]:
    """Jina text tower + tokenizer. Returns ``(model, tokenizer, info)``; ``info['lora']`` says what was merged."""
    path = Path(path)
    files, folder = weight_files(path)
    where = files[0] if len(files) == 1 else path
    reader = TensorReader.open(files)
    try:
        prefix = _prefix(reader.tensors)
    except CheckpointError as exc:
        hint = (
            " (it looks like the Gemma file; the two inputs are swapped)"
            if any("self_attn.q_norm" in k for k in reader.tensors)
            else ""
        )
        raise CheckpointError(f"{where}: {exc}{hint}") from None

    def base_key(name: str) -> str:
        plain = prefix + name
        if plain in reader.tensors:
            return plain
        para = prefix + name.replace(".weight", ".parametrizations.weight.original")
        if para in reader.tensors:
            return para
        raise CheckpointError(f"{where}: missing Jina key {plain!r}")

    shapes = {k: v.shape for k, v in reader.tensors.items()}
    layers = {int(m.group(1)) for k in shapes if (m := re.match(re.escape(prefix) + r"encoder\.layers\.(\d+)\.", k))}
    vocab, hidden = shapes[base_key("embeddings.word_embeddings.weight")]
    fc1 = shapes[base_key("encoder.layers.0.mlp.fc1.weight")]
    config = JinaTextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=max(layers) + 1 if layers else 0,
        num_heads=max(1, hidden // 64),  # Jina XLM-RoBERTa heads are 64 wide (16 at 1024); shapes cannot tell
        intermediate_size=fc1[0],
        type_vocab_size=shapes[base_key("embeddings.token_type_embeddings.weight")][0],
    )
    tasks, alpha = _lora_settings(folder)
    task_index = tasks.index(task) if task in tasks else None

    with torch.device("meta"):
        model = JinaTextModel(config)
    state, merged = {}, 0
    for name, meta in model.state_dict().items():
        key = base_key(name)
        if tuple(shapes[key]) != tuple(meta.shape):
            raise CheckpointError(
                f"{where}: Jina key {key!r} has shape {list(shapes[key])}, expected {list(meta.shape)}"
            )
        stored = reader.get(key)
        tensor = stored.float()
        lora_a = key.replace(".original", ".0.lora_A")
        if key.endswith(".parametrizations.weight.original") and lora_a in reader.tensors and task_index is not None:
            a = reader.get(lora_a).float()[task_index]
            b_ = reader.get(key.replace(".original", ".0.lora_B")).float()[task_index]
            rank = a.shape[0] if "embeddings" not in name else a.shape[1]
            delta = (a @ b_) if "embeddings" in name else (b_ @ a)
            tensor = tensor + delta * (alpha / rank)
            merged += 1
        state[name] = tensor.to(device=device, dtype=dtype or stored.dtype)
    model.load_state_dict(state, strict=True, assign=True)

    tokenizer = None
    if "spiece_model" in reader.tensors:
        blob = reader.get("spiece_model").numpy().tobytes()
        tokenizer = SentencePieceTokenizer(
            blob, add_bos=True, add_eos=True, pad_id=config.pad_token_id, source=f"{where} (spiece_model)"
        )
    else:
        tokenizer = tokenizer_from_folder(folder, False, False, ("<s>", "</s>", "<pad>"))
        if tokenizer is not None:
            tokenizer.add_bos = tokenizer.add_eos = True
    reader.close()
    if tokenizer is None:
        raise CheckpointError(
            f"{where}: no Jina tokenizer found (no embedded 'spiece_model' and no tokenizer.json beside it)"
        )
    info = {"lora": f"merged {task} adapter into {merged} tensors (alpha {alpha})" if merged else "none in file"}
    return model.eval().requires_grad_(False), tokenizer, info
