"""The solver registry: rk4 and dpm against references written here from the math, and the registry's readers."""

from __future__ import annotations

import math

import pytest
import torch

from newbie_core import sampling, solvers
from newbie_core.cli import build_parser


def field(x, t):
    return torch.sin(3 * x) - t * x


def explicit_rk(v, x, times, a, b, c):
    """Generic explicit Runge-Kutta from a Butcher tableau (no structure shared with the solvers)."""
    for t0, t1 in zip(times[:-1].tolist(), times[1:].tolist()):
        h = t1 - t0
        ks = []
        for i in range(len(b)):
            xi = x + h * sum((a[i][j] * ks[j] for j in range(i)), torch.zeros_like(x))
            ks.append(v(xi, t0 + c[i] * h))
        x = x + h * sum(bi * k for bi, k in zip(b, ks))
    return x


THREE_EIGHTHS = (
    [[0, 0, 0, 0], [1 / 3, 0, 0, 0], [-1 / 3, 1, 0, 0], [1, -1, 1, 0]],
    [1 / 8, 3 / 8, 3 / 8, 1 / 8],
    [0, 1 / 3, 2 / 3, 1],
)


def test_rk4_is_the_three_eighths_rule_of_torchdiffeq():
    x0 = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    times = sampling.time_grid(6, 6.0)
    calls = []
    got = solvers.rk4(lambda x, t: calls.append(t) or field(x, t), x0, times)
    assert torch.allclose(got, explicit_rk(field, x0, times, *THREE_EIGHTHS), atol=1e-12)
    assert len(calls) == 4 * 6 and calls[-1] == 1.0  # last stage at t1, as torchdiffeq


def test_rk4_is_fourth_order():
    x0 = torch.ones(1, dtype=torch.float64)
    errs = []
    for n in (4, 8, 16):
        grid = torch.linspace(0, 1, n + 1, dtype=torch.float64)
        errs.append(abs(float(solvers.rk4(lambda x, t: -x, x0, grid)) - math.exp(-1.0)))
    assert 14 < errs[0] / errs[1] < 18 and 14 < errs[1] / errs[2] < 18


def reference_dpm_sigma_space(v, x, steps, shift):
    """DPM-Solver++(2M) written in the paper's sigma-space form: alpha = 1 - s, sigma = s, noise prediction."""
    u = torch.linspace(0.0, 0.999, steps + 1, dtype=torch.float64)
    s = (shift * u / (1 + (shift - 1) * u)).flip(0).tolist()  # time_uniform_flow
    lam = [math.log((1 - si) / si) if si > 0 else math.inf for si in s]

    def x0_pred(x, si):
        vel = v(x, 1 - si)
        noise = x - (1 - si) * vel
        return (x - si * noise) / (1 - si)

    m = [x0_pred(x, s[0])]
    for k in range(1, steps + 1):
        h = lam[k] - lam[k - 1]
        coef = -(1 - s[k]) * math.expm1(-h)
        order = 1 if k in (1, steps) else 2
        x_new = (s[k] / s[k - 1]) * x + coef * m[-1]
        if order == 2:
            r0 = (lam[k - 1] - lam[k - 2]) / h
            x_new = x_new + 0.5 * coef * (m[-1] - m[-2]) / r0
        x = x_new
        if k < steps:
            m.append(x0_pred(x, s[k]))
    return x


@pytest.mark.parametrize("steps", [2, 3, 10])
def test_dpm_follows_the_sigma_space_reference(steps):
    x0 = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    calls = []
    got = solvers.dpm(lambda x, t: calls.append(t) or field(x, t), x0, sampling.solver_times("dpm", steps, 6.0))
    assert torch.allclose(got, reference_dpm_sigma_space(field, x0, steps, 6.0), atol=1e-10)
    assert len(calls) == steps  # one model call per step
    assert math.isclose(calls[0], 1 - 6 * 0.999 / (1 + 5 * 0.999), rel_tol=1e-12)


def test_dpm_is_exact_when_the_data_prediction_is_constant():
    """dx/dt = (c - x) / (1 - t) has x0 = c everywhere: the exponential integrator must land on c exactly."""
    c = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    x0 = torch.randn_like(c)
    times = sampling.solver_times("dpm", 5, 3.0)
    out = solvers.dpm(lambda x, t: (c - x) / (1 - t), x0, times)
    assert torch.allclose(out, c, atol=1e-12)


@pytest.mark.parametrize("name", list(solvers.SOLVERS))
def test_sigma_space_runs_retrace_the_time_space_trajectory(name):
    """ComfyUI drives solvers with sigmas and a denoiser x0 = x + sigma v; the result must not change."""
    denoise = lambda x, s: x + s[:, None, None, None] * field(x, 1 - s[:, None, None, None])  # noqa: E731
    x0 = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    times = sampling.solver_times(name, 7, 6.0)
    seen = []
    got = solvers.sample_sigmas(name, denoise, x0, 1 - times, callback=lambda i, x, d: seen.append(i))
    ref = solvers.SOLVERS[name].run(field, x0, times)
    # rk4's final stage reads the denoiser at SIGMA_FLOOR instead of 0, where x0 no longer holds v
    assert torch.allclose(got, ref, atol=1e-4 if name == "rk4" else 1e-10)
    assert seen == list(range(7))


def test_every_reader_offers_the_registry():
    names = list(solvers.SOLVERS)
    assert names == ["euler", "midpoint", "rk4", "dpm"]
    gen = build_parser().parse_args(["generate", "--solver", "dpm"])
    assert gen.solver == "dpm"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--solver", "heun"])
    assert [s.model_calls_per_step for s in solvers.SOLVERS.values()] == [1, 2, 4, 1]
