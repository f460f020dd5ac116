"""Time and output conventions, in one place.

NewBie (like Lumina-Image-2.0) is a rectified-flow model trained on the linear path

    x_t = t * x_data + (1 - t) * x_noise,   t in [0, 1],  t = 0 is pure noise,

and :class:`newbie_core.dit.NextDiT` returns the velocity ``v = x_data - x_noise``.
The timestep enters the sinusoidal embedder unscaled (no x1000).

ComfyUI's flow models use ``sigma = 1 - t`` (sigma = 1 is noise) and a CONST prediction
whose ``denoised = x - sigma * output``; the network output ComfyUI expects is therefore
``-v``. These helpers are the only place that conversion is written down.
"""

from __future__ import annotations

import torch


def t_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """ComfyUI/Flux sigma (1 = noise) -> official NewBie time (0 = noise)."""
    return 1.0 - sigma


def sigma_from_t(t: torch.Tensor) -> torch.Tensor:
    return 1.0 - t


def comfy_output_from_velocity(velocity: torch.Tensor) -> torch.Tensor:
    """Official velocity ``x_data - x_noise`` -> the flow output ComfyUI's CONST sampling expects."""
    return -velocity


def denoised_from_velocity(x_t: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_data estimate from a velocity at time t: ``x_t + (1 - t) * v``."""
    return x_t + (1.0 - t) * velocity


def velocity_from_denoised(x_t: torch.Tensor, denoised: torch.Tensor, sigma) -> torch.Tensor:
    """Inverse of :func:`denoised_from_velocity` in sigma terms: ``v = (x0 - x_t) / sigma`` (sigma > 0)."""
    return (denoised - x_t) / sigma
