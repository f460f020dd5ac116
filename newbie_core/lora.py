"""LoRA files for NewBie: module names under the prefixes trainers use, and their alpha/rank scale.

NewBie's official LoRA trainer saves PEFT-style keys (``base_model.model.<module>.lora_A.weight`` /
``lora_B.weight``) with no per-module alpha tensor; PEFT keeps ``lora_alpha`` and ``r`` in
``adapter_config.json`` (or a trainer puts them in the safetensors metadata). Without them the
scale alpha/rank is taken as 1, PEFT's default.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

#: Prefixes seen in NewBie LoRA files in front of the DiT's own module names.
MODULE_PREFIXES = ("base_model.model.", "unet.base_model.model.", "transformer.", "diffusion_model.", "")

_ADAPTER_SUFFIX = re.compile(r"\.(lora_A|lora_B|lora_up|lora_down)(\.default)?\.weight$")


def lora_modules(state_dict: dict) -> set[str]:
    """Module paths (as written in the file) that carry LoRA matrices."""
    return {_ADAPTER_SUFFIX.sub("", k) for k in state_dict if _ADAPTER_SUFFIX.search(k)}


def _first_number(source: dict, names) -> float | None:
    for name in names:
        value = source.get(name)
        if value is None:
            continue
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return None


def lora_alpha_rank(metadata: dict | None, lora_path: str | Path | None = None) -> tuple[float | None, float | None]:
    """(alpha, rank) from an ``adapter_config.json`` beside the file, else from the safetensors metadata."""
    sources = []
    if lora_path is not None:
        config = Path(lora_path).with_name("adapter_config.json")
        if config.is_file():
            try:
                sources.append(json.loads(config.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                pass
    if metadata:
        sources.append(metadata)
    for source in sources:
        alpha = _first_number(source, ("lora_alpha", "alpha", "ss_network_alpha"))
        rank = _first_number(source, ("r", "lora_rank", "rank", "ss_network_dim"))
        if alpha is not None:
            return alpha, rank
    return None, None


def with_alpha(state_dict: dict, alpha: float | None) -> dict:
    """Add ``<module>.alpha`` entries (the form loaders read) where the file has none."""
    if alpha is None:
        return state_dict
    out = dict(state_dict)
    for module in lora_modules(state_dict):
        out.setdefault(f"{module}.alpha", torch.tensor(float(alpha)))
    return out
