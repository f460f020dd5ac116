"""Three-axis rotary position embedding in the official (interleaved-pair) layout.

Angles are computed in float64 and rounded to float32, as the official tables are, so
that long positions keep full accuracy; unlike the official tables there is no length cap.
"""

from __future__ import annotations

import torch


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors to float32 for sensitive math; float32/float64 pass unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def rope_cos_sin(
    positions: torch.Tensor, axes_dims: tuple[int, ...], theta: float, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for integer ``positions`` [B, S, n_axes] -> two tensors [B, S, head_dim // 2].

    ``dtype`` is float32 (as the official tables) unless the model runs in float64.
    """
    pos = positions.to(torch.float64)
    angles = []
    for axis, d in enumerate(axes_dims):
        freqs = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=pos.device) / d))
        angles.append(pos[..., axis, None] * freqs)
    angle = torch.cat(angles, dim=-1).to(dtype)
    return angle.cos(), angle.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (2m, 2m+1) of ``x`` [B, H, S, D] by per-token angles; math in float32 or better.

    ``cos``/``sin`` are [B, S, D // 2] and are shared by every head.
    """
    xf = upcast(x).unflatten(-1, (-1, 2))
    real, imag = xf.unbind(-1)
    c = cos[:, None]
    s = sin[:, None]
    out = torch.stack((real * c - imag * s, real * s + imag * c), dim=-1).flatten(-2)
    return out.to(x.dtype)
