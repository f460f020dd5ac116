"""newbie_core.conventions: the t/sigma and sign conventions are written once, agree with each other, and are used."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

from newbie_core import conventions as cv

ROOT = Path(__file__).resolve().parents[1]


def test_host_round_trip_recovers_the_velocity():
    """ComfyUI's CONST flow: denoised = x - sigma * output. Our output and our inverse must undo each other."""
    gen = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, 16, 4, 4, generator=gen), torch.randn(2, 16, 4, 4, generator=gen)
    sigma = torch.tensor([0.7, 0.2]).view(2, 1, 1, 1)
    denoised = x - sigma * cv.comfy_output_from_velocity(v)
    assert torch.allclose(cv.velocity_from_denoised(x, denoised, sigma), v, atol=1e-6)
    # the data estimate moves along +v: at t = 1 - sigma, x_data = x_t + (1 - t) v = x + sigma v
    assert torch.allclose(denoised, x + sigma * v, atol=1e-6)
    assert torch.allclose(cv.denoised_from_velocity(x, v, cv.t_from_sigma(sigma)), denoised, atol=1e-6)


def test_time_and_sigma_are_mirror_images():
    t = torch.tensor([0.0, 0.25, 1.0])
    assert torch.equal(cv.sigma_from_t(t), torch.tensor([1.0, 0.75, 0.0]))  # t = 0 is noise, sigma = 1 is noise
    assert torch.equal(cv.t_from_sigma(cv.sigma_from_t(t)), t)


def test_every_helper_is_used_outside_the_module():
    helpers = [
        n.name
        for n in ast.parse((ROOT / "newbie_core" / "conventions.py").read_text()).body
        if isinstance(n, ast.FunctionDef)
    ]
    sources = [
        p.read_text(encoding="utf-8")
        for d in ("newbie_core", "nodes")
        for p in (ROOT / d).rglob("*.py")
        if p.name != "conventions.py"
    ]
    unused = [h for h in helpers if not any(h in s for s in sources)]
    assert not unused, f"newbie_core.conventions helpers nobody uses (remove them or use them): {unused}"
