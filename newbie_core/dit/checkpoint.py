"""Finding, recognising and loading Next-DiT checkpoints in the layouts users actually have.

Accepted: the released single file (``models/diffusion_models/*.safetensors``), the official HF
folder (``transformer/diffusion_pytorch_model.safetensors`` or sharded with an index json, a
``config.json`` beside it), each with or without ComfyUI's ``model.diffusion_model.`` prefix.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..weights import FLOAT8_DTYPES, TensorReader, parse_dtype, sharded_files
from .config import NextDiTConfig
from .layers import casting_operations
from .model import NextDiT

PREFIXES = ("model.diffusion_model.", "diffusion_model.")
UNUSED_KEYS = ("norm_final.weight",)
CONFIG_METADATA_KEY = "newbie_dit_config"


def transformer_files(path: str | Path) -> tuple[list[Path], Path | None]:
    """The safetensors file(s) holding the transformer at ``path`` and the config.json beside them, if any."""
    path = Path(path)
    if path.is_file():
        if path.name.endswith(".index.json"):
            return sharded_files(path), _sibling_config(path.parent)
        return [path], _sibling_config(path.parent)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such file or folder")
    if (path / "transformer").is_dir():
        path = path / "transformer"
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if indexes:
        return sharded_files(indexes[0]), _sibling_config(path)
    candidates = sorted(path.glob("*.safetensors"))
    preferred = [p for p in candidates if p.name in ("diffusion_pytorch_model.safetensors", "model.safetensors")]
    if preferred:
        return preferred[:1], _sibling_config(path)
    if len(candidates) == 1:
        return candidates, _sibling_config(path)
    if not candidates:
        raise CheckpointError(f"{path}: folder holds no .safetensors transformer weights")
    names = ", ".join(p.name for p in candidates)
    raise CheckpointError(f"{path}: several .safetensors files ({names}) and no index json; pass the file itself")


def _sibling_config(folder: Path) -> Path | None:
    cfg = folder / "config.json"
    return cfg if cfg.is_file() else None


def detect_prefix(keys) -> str:
    for prefix in PREFIXES:
        if any(k.startswith(prefix + "x_embedder.") for k in keys):
            return prefix
    return ""


def describe_foreign_checkpoint(keys: set[str], shapes: dict[str, tuple]) -> str | None:
    """A sentence naming what the file is when it is clearly not a NewBie transformer."""
    if any(k.startswith("model.layers.0.self_attn.") or k == "model.embed_tokens.weight" for k in keys) or any(
        k.startswith("language_model.") for k in keys
    ):
        return (
            "this is a text-encoder file (Gemma), not the NewBie diffusion transformer; put it in models/text_encoders"
        )
    if any(".mixer.Wqkv." in k for k in keys) or any(k.startswith("text_model.") for k in keys):
        return "this is a text-encoder file (Jina CLIP), not the NewBie diffusion transformer; put it in models/text_encoders"
    if any(k.startswith(("decoder.conv_in", "encoder.conv_in", "vae.", "first_stage_model.")) for k in keys):
        return "this is a VAE file, not the NewBie diffusion transformer; put it in models/vae"
    if any(k.startswith("time_caption_embed.") for k in keys):
        return "this is a diffusers-format Lumina2Transformer2DModel checkpoint; use the original-key release"
    if "cap_embedder.1.weight" in keys and "clip_text_pooled_proj.0.weight" not in keys:
        feat = shapes["cap_embedder.1.weight"][1]
        return (
            f"this is a plain Lumina-Image-2.0 style Next-DiT (caption width {feat}, no pooled Jina CLIP input), "
            "not NewBie-image-Exp0.1"
        )
    from ..file_kinds import LORA, classify

    if classify(shapes) is LORA:
        return "this is a LoRA file, not the NewBie diffusion transformer; put it in models/loras and use NewBie LoRA"
    if "x_embedder.weight" not in keys:
        sample = ", ".join(sorted(keys)[:3])
        return f"this is not a Next-DiT checkpoint (no 'x_embedder.weight'; first keys: {sample})"
    return None


def _count_blocks(keys, name: str) -> int:
    pattern = re.compile(rf"^{name}\.(\d+)\.")
    ids = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(ids) + 1 if ids else 0


def infer_config(shapes: dict[str, tuple], hints: dict | None = None) -> NextDiTConfig:
    """Derive the config from key shapes; ``hints`` (config.json / metadata) fill what shapes cannot tell."""
    hints = dict(hints or {})
    dim, cap_feat_dim = shapes["cap_embedder.1.weight"]
    head_dim = shapes["layers.0.attention.q_norm.weight"][0] if "layers.0.attention.q_norm.weight" in shapes else None
    if head_dim is None:
        head_dim = hints.get("dim", dim) // hints["n_heads"] if "n_heads" in hints else 96
    n_heads = dim // head_dim
    qkv_rows = shapes["layers.0.attention.qkv.weight"][0]
    n_kv_heads = (qkv_rows // head_dim - n_heads) // 2
    patch_features = shapes["x_embedder.weight"][1]
    patch_size = int(hints.get("patch_size", 2))
    in_channels = int(hints.get("in_channels", patch_features // (patch_size * patch_size)))
    if "axes_dims" in hints:
        axes_dims = tuple(int(a) for a in hints["axes_dims"])
    elif head_dim % 6 == 0:
        axes_dims = (head_dim // 3,) * 3
    else:
        raise CheckpointError(
            f"cannot infer RoPE axes_dims for head_dim {head_dim}; add a config.json with 'axes_dims' beside the file"
        )
    pooled = shapes.get("clip_text_pooled_proj.0.weight")
    merged = NextDiTConfig().to_dict()
    merged.update({k: v for k, v in hints.items() if k in merged})
    merged.update(
        patch_size=patch_size,
        in_channels=in_channels,
        dim=dim,
        n_layers=_count_blocks(shapes, "layers"),
        n_refiner_layers=_count_blocks(shapes, "noise_refiner"),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        ffn_hidden_dim=shapes["layers.0.feed_forward.w1.weight"][0],
        qk_norm="layers.0.attention.q_norm.weight" in shapes,
        cap_feat_dim=cap_feat_dim,
        axes_dims=axes_dims,
        clip_text_dim=pooled[0] if pooled else None,
    )
    try:
        return NextDiTConfig.from_dict(merged)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint shapes give an inconsistent config: {exc}") from None


def expected_shapes(config: NextDiTConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a model built from ``config`` (built on the meta device, no memory used)."""
    with torch.device("meta"):
        model = NextDiT(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _read_hints(config_json: Path | None, metadata: dict[str, str]) -> dict:
    hints: dict = {}
    if config_json is not None:
        try:
            hints.update(json.loads(config_json.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{config_json}: unreadable config.json ({exc})") from None
    if CONFIG_METADATA_KEY in metadata:
        hints.update(json.loads(metadata[CONFIG_METADATA_KEY]))
    return hints


def check_keys(reader_keys: dict[str, tuple], expected: dict[str, tuple], files: list[Path]) -> None:
    """Strict key/shape check; raises with every missing, unexpected and mis-shaped key named."""
    where = files[0] if len(files) == 1 else files[0].parent
    missing = sorted(k for k in expected if k not in reader_keys and k not in UNUSED_KEYS)
    unexpected = sorted(k for k in reader_keys if k not in expected)
    wrong = sorted(
        f"{k} (file {list(reader_keys[k])}, model {list(expected[k])})"
        for k in expected
        if k in reader_keys and tuple(reader_keys[k]) != tuple(expected[k])
    )
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
        if items:
            shown = ", ".join(items[:8]) + (f" ... (+{len(items) - 8} more)" if len(items) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(f"{where}: does not match the Next-DiT layout: " + "; ".join(problems))


def open_transformer_checkpoint(path, config: NextDiTConfig | None = None):
    """Validate a checkpoint and return ``(reader, prefix, config)`` without loading tensor data."""
    files, config_json = transformer_files(path)
    reader = TensorReader.open(files)
    prefix = detect_prefix(reader.tensors)
    # with a prefix (a full ComfyUI checkpoint) the VAE/text-encoder keys beside the DiT are not ours to check
    shapes = {k[len(prefix) :]: info.shape for k, info in reader.tensors.items() if k.startswith(prefix)}
    keys = set(shapes)
    where = files[0] if len(files) == 1 else files[0].parent
    foreign = describe_foreign_checkpoint(keys, shapes)
    if foreign:
        raise CheckpointError(f"{where}: {foreign}")
    if config is None:
        required = ("layers.0.attention.qkv.weight", "layers.0.feed_forward.w1.weight")
        absent = [k for k in required if k not in keys]
        if absent:
            raise CheckpointError(f"{where}: does not match the Next-DiT layout: missing keys: {', '.join(absent)}")
        config = infer_config(shapes, _read_hints(config_json, reader.metadata))
    check_keys(shapes, expected_shapes(config), files)
    return reader, prefix, config


def load_transformer(
    path,
    dtype=None,
    device="cpu",
    config: NextDiTConfig | None = None,
    operations=nn,
    compute_dtype=None,
) -> NextDiT:
    """Load a NewBie Next-DiT from safetensors, reading tensors lazily and casting each as it is read.

    ``dtype``: None keeps the file's dtype; otherwise a torch dtype or "bf16"/"fp16"/"fp32"/"fp8_e4m3fn"...
    The returned module computes in its parameters' dtype (bf16 for fp8 storage; ``compute_dtype``,
    e.g. "fp16", overrides that) and follows later ``.to(dtype)``/``.half()``/``.float()``; eval mode.
    """
    target = parse_dtype(dtype)
    reader, prefix, config = open_transformer_checkpoint(path, config)
    if target in FLOAT8_DTYPES and operations is nn:
        operations = casting_operations
    with torch.device("meta"):
        model = NextDiT(config, operations=operations)
    state = {}
    try:
        for name, param in model.state_dict().items():
            key = prefix + name
            if key not in reader.tensors:  # only the unused norm_final may be absent
                state[name] = torch.ones(param.shape, dtype=target or torch.float32, device=device)
                continue
            tensor = reader.get(key)
            state[name] = tensor.to(device=device, dtype=target or tensor.dtype)
    finally:
        reader.close()
    model.load_state_dict(state, strict=True, assign=True)
    model.compute_dtype = parse_dtype(compute_dtype)
    return model.eval().requires_grad_(False)
