"""Flow-matching sampling as the official NewBie code does it.

Time runs from t = 0 (noise) to t = 1 (data) on ``linspace(0, 1, steps + 1)`` warped by the
time shift ``t / (t + s - s t)`` (the same curve as ComfyUI's flow shift on ``sigma = 1 - t``).
``steps`` counts integration intervals: the official demo's "18 steps, midpoint" (18 grid
points) is ``steps=17, solver="midpoint"`` here, 34 model calls.

CFG works in velocity space with the official truncation (guidance only while ``t <
cfg_trunc``; after that the unconditional branch is not evaluated) and optional
renormalisation (the guided velocity's norm is capped at ``renorm`` times the conditional
one's, per sample).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import solvers
from .errors import ConfigError
from .noise import seeded_normal
from .solvers import SOLVERS  # noqa: F401  (the registry; re-exported for callers)

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def time_grid(steps: int, shift: float = 6.0) -> torch.Tensor:
    """``steps + 1`` increasing times from 0 to 1 (float64), shifted towards the noisy end."""
    return solvers.time_grid(steps, shift)


def solver_times(solver: str, steps: int, shift: float = 6.0) -> torch.Tensor:
    """The grid the official code uses for ``solver`` (dpm starts at t = 0.001, the ODE solvers at 0)."""
    return solvers.get_solver(solver).times(steps, shift)


def guided_velocity(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float, renorm: float = 0.0) -> torch.Tensor:
    """``v_u + scale (v_c - v_u)``; with ``renorm > 0`` the result's norm is capped at ``renorm * |v_c|`` per sample."""
    v = v_uncond + scale * (v_cond - v_uncond)
    if renorm > 0:
        dims = tuple(range(1, v.ndim))
        limit = renorm * torch.linalg.vector_norm(v_cond, dim=dims, keepdim=True)
        norm = torch.linalg.vector_norm(v, dim=dims, keepdim=True)
        v = torch.where(norm >= limit, v * (limit / norm), v)
    return v


def cfg_velocity(
    model: Callable[[torch.Tensor, torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor | None]],
    x: torch.Tensor,
    t: float,
    scale: float,
    cfg_trunc: float = 1.0,
    renorm: float = 0.0,
) -> torch.Tensor:
    """Velocity at time ``t``; ``model(x, t_batch, with_uncond)`` returns (v_cond, v_uncond or None)."""
    t_batch = torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)
    use_cfg = t < cfg_trunc and scale != 1.0
    v_cond, v_uncond = model(x, t_batch, use_cfg)
    if not use_cfg:
        return v_cond
    return guided_velocity(v_cond, v_uncond, scale, renorm)


def integrate(
    velocity: Callable[[torch.Tensor, float], torch.Tensor],
    x: torch.Tensor,
    times: torch.Tensor,
    solver: str = "midpoint",
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Fixed-grid ODE integration of dx/dt = velocity(x, t) over ``times`` (state kept in float32)."""
    run = solvers.get_solver(solver).run
    steps = len(times) - 1
    step_done = None if callback is None else (lambda i, xx, _x0: callback(i + 1, steps, xx))
    return run(velocity, x, times, step_done)


def initial_noise(batch: int, height: int, width: int, seed: int, channels: int = 16) -> torch.Tensor:
    """Noise from a CPU generator: sample i of a batch equals sample i of any larger batch with the same seed."""
    if height % 16 or width % 16 or height <= 0 or width <= 0:
        raise ConfigError(
            f"image size {width}x{height} is impossible: width and height must be positive multiples of 16"
        )
    return seeded_normal((batch, channels, height // 8, width // 8), seed)


# ------------------------------------------------------------------ the same maths in sigma space
# Hosts such as ComfyUI drive samplers with sigma = 1 - t and a denoiser returning the data
# estimate x0 = x + sigma * v. These helpers express the official sampler in those terms.


def official_sigmas(steps: int, shift: float = 6.0) -> torch.Tensor:
    """Decreasing sigmas 1 -> 0 equal to ``1 - time_grid`` (float32, ``steps + 1`` values)."""
    return (1.0 - time_grid(steps, shift)).to(torch.float32)


def cfg_active(sigma: float, cfg_trunc: float) -> bool:
    """Official truncation: guidance only while t = 1 - sigma is below ``cfg_trunc``."""
    return (1.0 - float(sigma)) < cfg_trunc


def guided_denoised(x, cond_denoised, uncond_denoised, sigma, scale: float, renorm: float = 0.0):
    """CFG on x0 predictions done in velocity space (official renorm semantics), returned as x0."""
    sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    sigma = sigma.clamp_min(1e-6)
    v_c = (cond_denoised - x) / sigma
    v_u = (uncond_denoised - x) / sigma
    return x + sigma * guided_velocity(v_c, v_u, scale, renorm)


def _sigma_sampler(name: str):
    def sample(denoise, x, sigmas, callback=None):
        return solvers.sample_sigmas(name, denoise, x, sigmas, callback)

    sample.__doc__ = f"Official {name} solver on a sigma grid; ``denoise(x, sigma_batch) -> x0``."
    return sample


sample_flow_euler = _sigma_sampler("euler")
sample_flow_midpoint = _sigma_sampler("midpoint")
