"""The step cache: exact at threshold 0, really skipping above it, never mixing batch compositions."""

from __future__ import annotations

import pytest
import torch
from dit_helpers import inputs, tiny_model

from newbie_core import sampling
from newbie_core.dit.step_cache import StepCache


def sample(model, steps=6, solver="midpoint", cfg=True):
    x, _, cap, pooled = inputs(model.config, batch=1, h=4, w=4, cap_len=4, seed=2)
    neg = torch.zeros_like(cap)

    def two(xx, t, with_uncond):
        if with_uncond:
            out = model(torch.cat([xx, xx]), torch.cat([t, t]), torch.cat([cap, neg]), None, torch.cat([pooled] * 2))
            return out[:1], out[1:]
        return model(xx, t, cap, None, pooled), None

    velocity = lambda xx, t: sampling.cfg_velocity(two, xx, t, 4.0 if cfg else 1.0, 0.5)  # noqa: E731
    return sampling.integrate(velocity, x, sampling.solver_times(solver, steps), solver)


@pytest.mark.parametrize("solver", ["midpoint", "dpm"])
def test_threshold_zero_equals_the_uncached_model_exactly(solver):
    model = tiny_model(seed=40, n_layers=3)
    plain = sample(model, solver=solver)
    cache = StepCache(0.0)
    model.layer_runner = cache
    cached = sample(model, solver=solver)
    assert torch.equal(cached, plain)
    assert cache.skipped == 0 and cache.computed > 0


def test_a_threshold_skips_blocks_and_stays_close():
    model = tiny_model(seed=40, n_layers=3)
    plain = sample(model, steps=12)
    calls = []
    hook = model.layers[1].register_forward_hook(lambda *a: calls.append(1))
    cache = StepCache(0.3)
    model.layer_runner = cache
    cached = sample(model, steps=12)
    hook.remove()
    assert cache.skipped > 0 and len(calls) == cache.computed  # skipped calls never reach block 1
    assert not torch.equal(cached, plain)
    assert float((cached - plain).norm() / plain.norm()) < 0.1


def test_batch_changes_never_reuse_another_compositions_residual():
    model = tiny_model(seed=41, n_layers=2)
    cache = StepCache(1e9)  # would skip everything it may
    model.layer_runner = cache
    x, t, cap, pooled = inputs(model.config, batch=2, h=4, w=4, cap_len=3)
    model(x, t, cap, None, pooled)
    one = model(x[:1], t[:1], cap[:1], None, pooled[:1])  # CFG truncated: batch 1 now
    model.layer_runner = None
    assert torch.equal(one, model(x[:1], t[:1], cap[:1], None, pooled[:1]))
    assert cache.skipped == 0 and cache.computed == 2
