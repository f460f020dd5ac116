"""Every solver against the official transport code (torchdiffeq odeint / DPM-Solver), when it is available.

Set NEWBIE_OFFICIAL_PATH to a checkout of NewBieAI-Lab/NewBie-image-Exp0.1 and make torchdiffeq
importable (neither is a dependency of this project). Skipped otherwise.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

from newbie_core import sampling, solvers

OFFICIAL = os.environ.get("NEWBIE_OFFICIAL_PATH")
pytestmark = pytest.mark.skipif(
    not OFFICIAL, reason="set NEWBIE_OFFICIAL_PATH (and make torchdiffeq importable) to compare with the official code"
)


@pytest.fixture(scope="module")
def transport():
    pytest.importorskip("torchdiffeq")
    sys.path.insert(0, OFFICIAL)
    try:
        import transport as official

        yield official
    finally:
        sys.path.remove(OFFICIAL)


def velocity_model(x, t, **_):
    """A smooth nonlinear stand-in for the DiT (official call convention: t is a [B] tensor)."""
    t = t.reshape(-1, *([1] * (x.ndim - 1))) if torch.is_tensor(t) and t.ndim else t
    return torch.tanh(1.5 * x) - 0.7 * t * x + 0.1


@pytest.mark.parametrize("name", ["euler", "midpoint", "rk4"])
def test_ode_solvers_match_official_odeint(transport, name):
    grid_points = 9
    z = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    sampler = transport.Sampler(transport.create_transport("Linear", "velocity"))
    fn = sampler.sample_ode(sampling_method=name, num_steps=grid_points, time_shifting_factor=6.0)
    official = fn(z, velocity_model)[-1]
    ours = sampling.integrate(
        lambda x, t: velocity_model(x, torch.tensor(t)), z, sampling.time_grid(grid_points - 1), name
    )
    assert float((ours - official).abs().max()) < 1e-6


def test_dpm_matches_official_dpm_solver(transport):
    steps = 8
    # float64 state on both sides: the official code's float32 log-SNR arithmetic alone differs by ~2e-5
    z = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sampler = transport.Sampler(transport.create_transport("Linear", "velocity"))
    fn = sampler.sample_dpm(velocity_model, model_kwargs={})
    official = fn(z, steps=steps, order=2, skip_type="time_uniform_flow", method="multistep", flow_shift=6.0)
    times = sampling.solver_times("dpm", steps, 6.0)
    ours = solvers.dpm(lambda x, t: velocity_model(x, torch.tensor(t, dtype=torch.float64)), z, times)
    assert float((ours - official).abs().max()) < 1e-6
