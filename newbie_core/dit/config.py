"""Next-DiT hyper-parameters: the released NewBie configuration and small test configs."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass


def official_ffn_hidden(dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    """FFN width as the official FeedForward computes it from ``4 * dim``."""
    hidden = 4 * dim
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@dataclass(frozen=True)
class NextDiTConfig:
    """Everything that fixes the network's shapes and numerics.

    ``clip_text_dim=None`` builds a plain Next-DiT without the pooled-CLIP path
    (Lumina-Image-2.0 style). ``qk_norm_eps`` is the q/k RMSNorm epsilon of the
    official pure-PyTorch RMSNorm (1e-6); training with apex used 1e-5, which
    differs by far less than bf16 resolution on real activations.
    """

    patch_size: int = 2
    in_channels: int = 16
    dim: int = 2304
    n_layers: int = 36
    n_refiner_layers: int = 2
    n_heads: int = 24
    n_kv_heads: int = 8
    ffn_hidden_dim: int = 9216
    norm_eps: float = 1e-5
    qk_norm: bool = True
    qk_norm_eps: float = 1e-6
    pooled_norm_eps: float = 1e-6
    cap_feat_dim: int = 2560
    axes_dims: tuple[int, ...] = (32, 32, 32)
    axes_lens: tuple[int, ...] = (1024, 512, 512)
    rope_theta: float = 10000.0
    clip_text_dim: int | None = 1024

    def __post_init__(self) -> None:
        problems = []
        if self.dim % self.n_heads:
            problems.append(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        elif sum(self.axes_dims) != self.head_dim:
            problems.append(
                f"axes_dims {list(self.axes_dims)} sum to {sum(self.axes_dims)}, not head_dim {self.head_dim}"
            )
        if any(d % 2 for d in self.axes_dims):
            problems.append(f"axes_dims {list(self.axes_dims)} must all be even")
        if self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads:
            problems.append(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.patch_size < 1 or self.in_channels < 1:
            problems.append("patch_size and in_channels must be positive")
        if problems:
            raise ValueError("invalid Next-DiT config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def adaln_dim(self) -> int:
        """Width of the time/conditioning vector (official: ``min(dim, 1024)``)."""
        return min(self.dim, 1024)

    @property
    def patch_features(self) -> int:
        return self.patch_size * self.patch_size * self.in_channels

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["axes_dims"] = list(self.axes_dims)
        d["axes_lens"] = list(self.axes_lens)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> NextDiTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("axes_dims", "axes_lens"):
            if key in kwargs:
                kwargs[key] = tuple(int(v) for v in kwargs[key])
        return cls(**kwargs)

    def replace(self, **changes) -> NextDiTConfig:
        return dataclasses.replace(self, **changes)


#: NewBie-image-Exp0.1 (``NextDiT_3B_GQA_patch2_Adaln_Refiner_WHIT_CLIP``, in_channels 16, cap_feat_dim 2560).
NEWBIE_EXP01 = NextDiTConfig()


def tiny_config(**overrides) -> NextDiTConfig:
    """A few-hundred-kilobyte config with every structural feature of the real one (GQA, refiners, pooled path)."""
    base = dict(
        dim=48,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=4,
        n_kv_heads=2,
        ffn_hidden_dim=official_ffn_hidden(48, multiple_of=32),
        cap_feat_dim=40,
        axes_dims=(4, 4, 4),
        clip_text_dim=24,
    )
    base.update(overrides)
    return NextDiTConfig(**base)
