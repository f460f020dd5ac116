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
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..file_kinds import (
    JINA_CLIP_V2,
    JINA_V3,
    classify,
    classify_path,
    jina_adapter_tasks,
    jina_prefix,
    wrong_file_hint,
)
from ..weights import FLOAT8_DTYPES, QuantisedWeights, TensorReader, weight_files
from .tokenizers import SentencePieceTokenizer, Tokenizer, tokenizer_from_folder

DEFAULT_TASK = "retrieval.query"

log = logging.getLogger("newbie")


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


@dataclass(frozen=True)
class _FileConfig:
    """What the folder's ``config.json`` states (None where it is silent)."""

    tasks: list[str] | None = None
    default_task: str | None = None
    lora_alpha: float | None = None
    num_heads: int | None = None
    rotary_base: float | None = None
    layer_norm_eps: float | None = None


def _file_config(folder: Path) -> _FileConfig:
    path = folder / "config.json"
    if not path.is_file():
        return _FileConfig()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable config.json ({exc})") from None
    if raw.get("model_type") not in (None, "jina_clip", "xlm-roberta"):
        log.info("ignoring %s: it describes a %r model, not Jina CLIP v2", path, raw.get("model_type"))
        return _FileConfig()
    text_cfg = raw.get("text_config") if isinstance(raw.get("text_config"), dict) else {}
    kwargs = text_cfg.get("hf_model_config_kwargs") if isinstance(text_cfg.get("hf_model_config_kwargs"), dict) else {}
    found: dict = {}
    for source in (raw, text_cfg, kwargs):  # the most specific source wins
        for ours, theirs in (
            ("tasks", "lora_adaptations"),
            ("default_task", "default_lora_task"),
            ("lora_alpha", "lora_alpha"),
            ("num_heads", "num_attention_heads"),
            ("rotary_base", "rotary_emb_base"),
            ("layer_norm_eps", "layer_norm_eps"),
        ):
            if source.get(theirs) is not None:
                found[ours] = source[theirs]
    return _FileConfig(**found)


def _jina_files(path: Path) -> tuple[list[Path], Path]:
    """The Jina weight file(s) at ``path``; in a folder holding both NewBie forms, the one the table names Jina."""
    files, folder = weight_files(path)
    if len(files) > 1 and path.is_dir() and not any(path.glob("*.safetensors.index.json")):
        jina = [f for f in files if classify_path(f)[0] is JINA_CLIP_V2]
        if jina:
            if len(jina) > 1:
                log.info("Jina: %s holds %s; using %s", path, ", ".join(f.name for f in jina), jina[0].name)
            return jina[:1], folder
    return files, folder


def load_jina(
    path, dtype: torch.dtype | None = None, device="cpu", task: str = DEFAULT_TASK
) -> tuple[JinaTextModel, Tokenizer, dict]:
    """Jina text tower + tokenizer. Returns ``(model, tokenizer, info)``; ``info['lora']`` says what was merged.

    Accepts the official ``text_model.transformer.roberta.*`` layout (task LoRA as torch parametrizations,
    merged here for ``task``), ComfyUI's repackage (``model.*`` + ``spiece_model``) and folders holding either.
    jina-embeddings-v3 (same shapes, five adapters) is refused by name.
    """
    path = Path(path)
    files, folder = _jina_files(path)
    where = files[0] if len(files) == 1 else path
    reader = TensorReader.open(files)
    shapes = {k: v.shape for k, v in reader.tensors.items()}
    kind = classify(shapes)
    if kind is JINA_V3:
        n = jina_adapter_tasks(shapes)
        raise CheckpointError(
            f"{where}: this is jina-embeddings-v3 ({n or 'no'} task adapters, keys under 'roberta.'), a different "
            "model from Jina CLIP v2; use jinaai/jina-clip-v2's model.safetensors or ComfyUI's "
            "jina_clip_v2_bf16.safetensors"
        )
    prefix = jina_prefix(shapes)
    if prefix is None:
        raise CheckpointError(
            f"{where}: no 'embeddings.word_embeddings' / 'mixer.Wqkv' keys: this is not a Jina CLIP v2 text file"
            + wrong_file_hint(JINA_CLIP_V2, shapes)
        )
    weights = QuantisedWeights(reader, where)
    file_cfg = _file_config(folder)
    assumed: list[str] = []

    def base_key(name: str) -> str:
        plain = prefix + name
        if plain in shapes:
            return plain
        para = prefix + name.replace(".weight", ".parametrizations.weight.original")
        if para in shapes:
            return para
        raise CheckpointError(f"{where}: missing Jina key {plain!r}")

    layers = {int(m.group(1)) for k in shapes if (m := re.match(re.escape(prefix) + r"encoder\.layers\.(\d+)\.", k))}
    vocab, hidden = shapes[base_key("embeddings.word_embeddings.weight")]
    if file_cfg.num_heads:
        heads = int(file_cfg.num_heads)
    else:
        heads = max(1, hidden // 64)
        assumed.append(f"{heads} attention heads of 64 (no config.json states num_attention_heads)")
    defaults = JinaTextConfig()
    config = JinaTextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=max(layers) + 1 if layers else 0,
        num_heads=heads,
        intermediate_size=shapes[base_key("encoder.layers.0.mlp.fc1.weight")][0],
        type_vocab_size=shapes[base_key("embeddings.token_type_embeddings.weight")][0],
        rotary_base=float(file_cfg.rotary_base or defaults.rotary_base),
        layer_norm_eps=float(file_cfg.layer_norm_eps or defaults.layer_norm_eps),
    )
    n_tasks = jina_adapter_tasks(shapes)
    task_index = None
    if n_tasks:
        tasks = file_cfg.tasks
        if tasks is None:
            tasks = [DEFAULT_TASK] if n_tasks == 1 else None
            assumed.append(f"the file's single adapter is {DEFAULT_TASK!r} (no config.json lists lora_adaptations)")
        if tasks is None or len(tasks) != n_tasks:
            raise CheckpointError(
                f"{where}: the file carries {n_tasks} task adapters but config.json lists {tasks}; "
                "cannot tell which one is retrieval.query"
            )
        if task not in tasks:
            raise CheckpointError(f"{where}: no {task!r} adapter in this file (it has {', '.join(tasks)})")
        task_index = tasks.index(task)
    else:
        assumed.append(f"the {task} adapter is already merged (the file carries no adapter tensors)")
    alpha = file_cfg.lora_alpha
    if task_index is not None and alpha is None:
        alpha = 1.0
        assumed.append("LoRA alpha 1 (config.json states no lora_alpha)")

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
        tensor = weights.get(key).float()
        lora_a = key.replace(".original", ".0.lora_A")
        if key.endswith(".parametrizations.weight.original") and lora_a in shapes and task_index is not None:
            a = weights.get(lora_a).float()[task_index]
            b_ = weights.get(key.replace(".original", ".0.lora_B")).float()[task_index]
            embedding = "embeddings" in name  # embeddings: A [vocab, r] @ B [r, dim]; linears: B [out, r] @ A [r, in]
            rank = a.shape[1] if embedding else a.shape[0]
            delta = (a @ b_) if embedding else (b_ @ a)
            tensor = tensor + delta * (float(alpha) / rank)
            merged += 1
        plain_dtype = stored.dtype if stored.dtype.is_floating_point and stored.dtype not in FLOAT8_DTYPES else None
        state[name] = tensor.to(device=device, dtype=dtype or plain_dtype or torch.float32)
    model.load_state_dict(state, strict=True, assign=True)

    tokenizer = None
    if "spiece_model" in shapes:
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
    if assumed:
        log.info("Jina %s: assumed %s", where, "; ".join(assumed))
    info = {
        "lora": f"merged {task} adapter into {merged} tensors (alpha {float(alpha)})" if merged else "none in file",
        "assumed": assumed,
        "dequantised": weights.quantised,
    }
    return model.eval().requires_grad_(False), tokenizer, info
