"""Three-axis rotary position embedding in the official (interleaved-pair) layout.

Angles are computed in float64 and rounded to float32, as the official tables are, so
that long positions keep full accuracy; unlike the official tables there is no length cap.
"""

from __future__ import annotations

import torch


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors to float32 for sensitive math; float32/float64 pass unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def rope_frequencies(
    positions: torch.Tensor, axes_dims: tuple[int, ...], theta: float, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Unit complex rotations for integer ``positions`` [B, S, n_axes] -> [B, S, head_dim // 2].

    Angles are computed in float64, then rounded to ``dtype`` (float32, as the official tables,
    unless the model runs in float64) before taking cos/sin.
    """
    pos = positions.to(torch.float64)
    angles = []
    for axis, d in enumerate(axes_dims):
        freqs = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=pos.device) / d))
        angles.append(pos[..., axis, None] * freqs)
    angle = torch.cat(angles, dim=-1).to(dtype)
    return torch.polar(torch.ones_like(angle), angle)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (2m, 2m+1) of ``x`` [B, H, S, D] as complex numbers; math in float32 or better.

    ``freqs`` is [B, S, D // 2] complex and shared by every head. Eager runs one complex multiply;
    under ``torch.compile`` (no complex codegen) the same products are written in real arithmetic,
    which gives bitwise the same result and fuses with its neighbours.
    """
    pairs = upcast(x).unflatten(-1, (-1, 2))
    if torch.compiler.is_compiling():
        cos, sin = freqs.real[:, None], freqs.imag[:, None]
        even, odd = pairs[..., 0], pairs[..., 1]
        return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2).to(x.dtype)
    return torch.view_as_real(torch.view_as_complex(pairs) * freqs[:, None]).flatten(-2).to(x.dtype)
