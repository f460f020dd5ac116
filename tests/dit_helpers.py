"""Tiny random Next-DiTs and checkpoints in the official key layout, for tests."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from newbie_core.dit import NextDiT, tiny_config


def randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Seeded non-trivial weights everywhere (the official init zeroes the adaLN paths, which hides bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = "norm" in name or name.startswith(("cap_embedder.0", "clip_text_pooled_proj.0"))
            if is_norm:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (scale * 4 / max(1, p.shape[-1]) ** 0.5))
    return model


def tiny_model(seed: int = 0, **overrides) -> NextDiT:
    return randomize(NextDiT(tiny_config(**overrides)), seed).eval().requires_grad_(False)


def reference_cfg(model: NextDiT) -> dict:
    c = model.config
    return dict(
        patch_size=c.patch_size,
        dim=c.dim,
        n_heads=c.n_heads,
        n_kv_heads=c.n_kv_heads,
        n_layers=c.n_layers,
        n_refiner_layers=c.n_refiner_layers,
        norm_eps=c.norm_eps,
        qk_norm_eps=c.qk_norm_eps,
        pooled_norm_eps=c.pooled_norm_eps,
        axes_dims=c.axes_dims,
        theta=c.rope_theta,
    )


def save_checkpoint(model: NextDiT, path, prefix: str = "", dtype=None, drop=(), extra=None, metadata=None):
    sd = {
        prefix + k: (v.to(dtype) if dtype else v).contiguous() for k, v in model.state_dict().items() if k not in drop
    }
    sd.update(extra or {})
    save_file(sd, str(path), metadata=metadata)
    return path


def inputs(cfg, batch=2, h=8, w=6, cap_len=5, seed=1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, h, w, generator=gen, dtype=dtype)
    t = torch.rand(batch, generator=gen, dtype=dtype)
    cap = torch.randn(batch, cap_len, cfg.cap_feat_dim, generator=gen, dtype=dtype)
    pooled = torch.randn(batch, cfg.clip_text_dim, generator=gen, dtype=dtype)
    return x, t, cap, pooled
