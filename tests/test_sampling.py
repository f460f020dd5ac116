"""Schedule, solvers and CFG against references written here."""

from __future__ import annotations

import math

import pytest
import torch

from newbie_core import sampling
from newbie_core.errors import ConfigError


def test_time_grid_equals_flux_shift_on_sigma():
    shift, steps = 6.0, 10
    t = sampling.time_grid(steps, shift)
    for k in range(steps + 1):
        sigma = 1 - k / steps
        shifted_sigma = shift * sigma / (1 + (shift - 1) * sigma)
        assert math.isclose(float(t[k]), 1 - shifted_sigma, abs_tol=1e-12)
    assert float(t[0]) == 0.0 and float(t[-1]) == 1.0


def reference_solve(v, x, times, solver):
    x = x.clone()
    for a, b in zip(times[:-1].tolist(), times[1:].tolist()):
        h = b - a
        if solver == "euler":
            x = x + h * v(x, a)
        else:
            k1 = v(x, a)
            x = x + h * v(x + 0.5 * h * k1, a + 0.5 * h)
    return x


@pytest.mark.parametrize("solver", ["euler", "midpoint"])
def test_integrators_follow_the_reference_trajectory(solver):
    v = lambda x, t: -x + 3 * t  # noqa: E731
    x0 = torch.randn(2, 16, 4, 4)
    times = sampling.time_grid(9, 6.0)
    seen = []
    got = sampling.integrate(v, x0, times, solver, callback=lambda i, n, x: seen.append((i, n)))
    assert torch.allclose(got, reference_solve(v, x0, times, solver), atol=1e-6)
    assert seen == [(i, 9) for i in range(1, 10)]


def test_midpoint_is_second_order():
    exact = lambda x0: x0 * math.exp(-1.0)  # dx/dt = -x on [0, 1]  # noqa: E731
    x0 = torch.ones(1, dtype=torch.float64)
    errs = []
    for n in (10, 20, 40):
        grid = torch.linspace(0, 1, n + 1, dtype=torch.float64)
        out = sampling.integrate(lambda x, t: -x.double(), x0, grid, "midpoint")
        errs.append(abs(float(out) - exact(1.0)))
    assert 3.5 < errs[0] / errs[1] < 4.5 and 3.5 < errs[1] / errs[2] < 4.5


def test_cfg_truncation_skips_the_unconditional_branch():
    calls = []

    def model(x, t, with_uncond):
        calls.append((float(t[0]), with_uncond))
        return torch.ones_like(x), (torch.zeros_like(x) if with_uncond else None)

    x = torch.zeros(1, 4)
    early = sampling.cfg_velocity(model, x, 0.1, scale=5.0, cfg_trunc=0.25)
    late = sampling.cfg_velocity(model, x, 0.5, scale=5.0, cfg_trunc=0.25)
    assert torch.equal(early, torch.full_like(x, 5.0))  # 0 + 5 (1 - 0)
    assert torch.equal(late, torch.ones_like(x))
    assert [(round(t, 6), u) for t, u in calls] == [(0.1, True), (0.5, False)]


def test_renorm_caps_the_guided_norm_per_sample():
    v_c = torch.tensor([[3.0, 4.0], [0.3, 0.4]])  # norms 5 and 0.5
    v_u = torch.tensor([[0.0, 0.0], [0.3, 0.4]])
    out = sampling.guided_velocity(v_c, v_u, scale=4.0, renorm=1.0)
    assert torch.allclose(out[0], v_c[0])  # 4x too long: capped back to |v_c|
    assert torch.allclose(out[1], v_c[1])  # guidance does nothing here: untouched
    loose = sampling.guided_velocity(v_c, v_u, scale=4.0, renorm=2.0)
    assert torch.allclose(loose[0].norm(), torch.tensor(10.0))
    assert torch.allclose(sampling.guided_velocity(v_c, v_u, 4.0, 0.0)[0], 4 * v_c[0])


def test_noise_is_batch_stable_and_seeded():
    one = sampling.initial_noise(1, 64, 32, seed=7)
    three = sampling.initial_noise(3, 64, 32, seed=7)
    assert one.shape == (1, 16, 8, 4)
    assert torch.equal(three[:1], one)
    assert not torch.equal(sampling.initial_noise(1, 64, 32, seed=8), one)


@pytest.mark.parametrize(
    "call,message",
    [
        (
            lambda: sampling.initial_noise(1, 100, 64, 0),
            "image size 64x100 is impossible: width and height must be positive multiples of 16",
        ),
        (lambda: sampling.time_grid(0), "steps must be at least 1, got 0"),
        (
            lambda: sampling.integrate(lambda x, t: x, torch.zeros(1), torch.tensor([0.0, 1.0]), "rk45"),
            "unknown solver 'rk45'; choose one of: euler, midpoint, rk4, dpm",
        ),
    ],
)
def test_bad_settings(call, message):
    with pytest.raises(ConfigError) as err:
        call()
    assert str(err.value) == message


def test_sigma_space_solvers_equal_the_time_space_ones():
    """x0 = x + sigma * v, so the sigma-space solvers must retrace the official trajectory."""
    v = lambda x, t: torch.sin(3 * x) - t  # noqa: E731
    denoise = lambda x, s: x + s[:, None, None, None] * v(x, 1 - s[:, None, None, None])  # noqa: E731
    x0 = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    times = sampling.time_grid(7, 6.0)
    sig = 1 - times
    for name, fn in (("euler", sampling.sample_flow_euler), ("midpoint", sampling.sample_flow_midpoint)):
        ref = sampling.integrate(lambda x, t: v(x, t), x0, times, name).double()
        assert torch.allclose(fn(denoise, x0, sig), ref, atol=1e-5)
    assert torch.allclose(sampling.official_sigmas(7), sig.float())


def test_guided_denoised_matches_velocity_cfg():
    x = torch.randn(2, 4)
    sigma = torch.tensor([0.5, 0.8])
    v_c, v_u = torch.randn(2, 4), torch.randn(2, 4)
    d_c, d_u = x + sigma[:, None] * v_c, x + sigma[:, None] * v_u
    got = sampling.guided_denoised(x, d_c, d_u, sigma, 3.0, renorm=1.0)
    assert torch.allclose(got, x + sigma[:, None] * sampling.guided_velocity(v_c, v_u, 3.0, 1.0), atol=1e-5)
    assert sampling.cfg_active(0.9, 0.25) and not sampling.cfg_active(0.7, 0.25)
