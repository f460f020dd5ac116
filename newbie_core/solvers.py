"""The solver registry: every sampler the pack offers, each written once, in the official time convention.

A solver integrates dx/dt = v(x, t) over an increasing grid of times (t = 0 noise, t = 1 data)
with a velocity function ``v(x, t: float) -> tensor``. The CLI's ``--solver`` choices, the
ComfyUI sampler names (``newbie_<name>``) and the pipeline all read :data:`SOLVERS`.
Hosts that work in sigma space reach these solvers through :func:`velocity_from_denoiser`,
the only place the sigma/t conversion of a denoiser is done (with ``newbie_core.conventions``).

* ``euler``, ``midpoint``, ``rk4``: torchdiffeq's fixed-grid steps, as the official demo runs them
  through ``odeint`` (rk4 is torchdiffeq's 3/8-rule variant, four model calls per step).
* ``dpm``: the demo's DPM-Solver++ multistep, order 2 (first and last steps first order), on the
  ``time_uniform_flow`` grid (starts at t = 0.001); one model call per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .conventions import denoised_from_velocity, sigma_from_t, t_from_sigma, velocity_from_denoised
from .errors import ConfigError

Velocity = Callable[[torch.Tensor, float], torch.Tensor]
#: ``callback(step_index, x_after_step, data_estimate)``, called once per step.
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None] | None


def time_grid(steps: int, shift: float = 6.0, start: float = 0.0) -> torch.Tensor:
    """``steps + 1`` increasing times from ``start`` to 1 (float64), warped by ``t / (t + s - s t)``."""
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}")
    if shift <= 0:
        raise ConfigError(f"shift must be positive, got {shift}")
    t = torch.linspace(start, 1.0, steps + 1, dtype=torch.float64)
    return t / (t + shift - shift * t)


def _state(x: torch.Tensor) -> torch.Tensor:
    """The ODE state is kept in float32 (official), or float64 when given float64."""
    return x if x.dtype == torch.float64 else x.float()


def _intervals(times: torch.Tensor):
    values = [float(t) for t in times]
    return list(zip(values[:-1], values[1:]))


def euler(velocity: Velocity, x: torch.Tensor, times: torch.Tensor, callback: StepCallback = None) -> torch.Tensor:
    x = _state(x)
    for i, (t0, t1) in enumerate(_intervals(times)):
        v0 = velocity(x, t0).to(x.dtype)
        estimate = denoised_from_velocity(x, v0, t0)
        x = x + (t1 - t0) * v0
        if callback is not None:
            callback(i, x, estimate)
    return x


def midpoint(velocity: Velocity, x: torch.Tensor, times: torch.Tensor, callback: StepCallback = None) -> torch.Tensor:
    x = _state(x)
    for i, (t0, t1) in enumerate(_intervals(times)):
        dt = t1 - t0
        half = 0.5 * dt
        v0 = velocity(x, t0).to(x.dtype)
        estimate = denoised_from_velocity(x, v0, t0)
        x = x + dt * velocity(x + half * v0, t0 + half).to(x.dtype)
        if callback is not None:
            callback(i, x, estimate)
    return x


def rk4(velocity: Velocity, x: torch.Tensor, times: torch.Tensor, callback: StepCallback = None) -> torch.Tensor:
    """Kutta's 3/8 rule (torchdiffeq's fixed-grid ``rk4``); the last stage is evaluated at ``t1``."""
    x = _state(x)
    third = 1.0 / 3.0
    for i, (t0, t1) in enumerate(_intervals(times)):
        dt = t1 - t0
        k1 = velocity(x, t0).to(x.dtype)
        k2 = velocity(x + dt * k1 * third, t0 + dt * third).to(x.dtype)
        k3 = velocity(x + dt * (k2 - k1 * third), t0 + dt * (2.0 * third)).to(x.dtype)
        k4 = velocity(x + dt * (k1 - k2 + k3), t1).to(x.dtype)
        estimate = denoised_from_velocity(x, k1, t0)
        x = x + (k1 + 3 * (k2 + k3) + k4) * dt * 0.125
        if callback is not None:
            callback(i, x, estimate)
    return x


def _half_log_snr(t: float) -> float:
    """lambda = log(alpha / sigma) with alpha = t, sigma = 1 - t (infinite at both ends)."""
    if t <= 0.0:
        return -math.inf
    if t >= 1.0:
        return math.inf
    return math.log(t) - math.log1p(-t)


def dpm(velocity: Velocity, x: torch.Tensor, times: torch.Tensor, callback: StepCallback = None) -> torch.Tensor:
    """DPM-Solver++(2M) in data prediction, lower order on the first and the final step."""
    x = _state(x)
    steps = len(times) - 1
    ts = [float(t) for t in times]
    data_now = denoised_from_velocity(x, velocity(x, ts[0]).to(x.dtype), ts[0])
    data_before = None
    for i in range(1, steps + 1):
        t_prev, t = ts[i - 1], ts[i]
        lam_prev, lam = _half_log_snr(t_prev), _half_log_snr(t)
        h = lam - lam_prev
        phi = math.expm1(-h)  # -1 when the step reaches t = 1
        ratio = float(sigma_from_t(t)) / float(sigma_from_t(t_prev))
        x_new = ratio * x - (t * phi) * data_now
        if data_before is not None and i < steps:  # second order: one extrapolation term
            h_before = lam_prev - _half_log_snr(ts[i - 2])
            inv_r = h / h_before  # 0 when the previous step started at pure noise (h_before = inf)
            x_new = x_new - (0.5 * t * phi * inv_r) * (data_now - data_before)
        x = x_new
        if callback is not None:
            callback(i - 1, x, data_now)
        if i < steps:  # the final model value is never needed
            data_before, data_now = data_now, denoised_from_velocity(x, velocity(x, t).to(x.dtype), t)
    return x


@dataclass(frozen=True)
class Solver:
    name: str
    run: Callable[[Velocity, torch.Tensor, torch.Tensor, StepCallback], torch.Tensor]
    model_calls_per_step: int
    grid_start: float
    summary: str

    def times(self, steps: int, shift: float = 6.0) -> torch.Tensor:
        """This solver's official grid for ``steps`` integration steps."""
        return time_grid(steps, shift, self.grid_start)


SOLVERS: dict[str, Solver] = {
    s.name: s
    for s in (
        Solver("euler", euler, 1, 0.0, "official Euler (1 model call per step)"),
        Solver("midpoint", midpoint, 2, 0.0, "official default, the demo's midpoint (2 calls per step)"),
        Solver("rk4", rk4, 4, 0.0, "the demo's rk4, torchdiffeq's 3/8 rule (4 calls per step)"),
        Solver("dpm", dpm, 1, 0.001, "the demo's DPM-Solver++ 2M, time_uniform_flow grid (1 call per step)"),
    )
}


def get_solver(name: str) -> Solver:
    try:
        return SOLVERS[name]
    except KeyError:
        raise ConfigError(f"unknown solver {name!r}; choose one of: {', '.join(SOLVERS)}") from None


# ------------------------------------------------------------------ sigma-space hosts (ComfyUI)
#: Below this sigma a denoiser's output no longer carries the velocity (x0 = x + sigma v); rk4's
#: final stage at t = 1 is evaluated here instead.
SIGMA_FLOOR = 1e-4


def velocity_from_denoiser(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Velocity:
    """A velocity function over ``denoise(x, sigma_batch) -> x0`` (ComfyUI's model call)."""

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        sigma = max(float(sigma_from_t(t)), SIGMA_FLOOR)
        s = x.new_full((x.shape[0],), sigma)
        return velocity_from_denoised(x, denoise(x, s), sigma)

    return velocity


@torch.no_grad()
def sample_sigmas(name: str, denoise, x: torch.Tensor, sigmas: torch.Tensor, callback: StepCallback = None):
    """Run solver ``name`` over a decreasing sigma grid (e.g. a ComfyUI schedule) with a denoiser."""
    times = t_from_sigma(torch.as_tensor(sigmas, dtype=torch.float64).cpu())
    return get_solver(name).run(velocity_from_denoiser(denoise), x, times, callback).to(x.dtype)
