"""Opt-in compile of the repeated block: one graph for every layer, no recompiles across steps or lengths."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from dit_helpers import inputs, tiny_model

from newbie_core.dit.compile import compile_repeated_block
from newbie_core.dit.rope import apply_rope, rope_frequencies

CALLS = ((2, 5, True), (1, 5, False), (2, 7, True), (1, 3, False), (2, 6, True), (1, 6, False))


def run_calls(model, reference):
    worst = 0.0
    for batch, cap_len, padded in CALLS:
        x, t, cap, pooled = inputs(model.config, batch=batch, h=4, w=6, cap_len=cap_len, seed=cap_len)
        mask = torch.ones(batch, cap_len, dtype=torch.long)
        if padded:
            mask[1, cap_len - 2 :] = 0
        out = model(x, t, cap, mask, pooled)
        worst = max(worst, float((out - reference(x, t, cap, mask, pooled)).abs().max()))
    return worst


def test_every_layer_shares_one_graph_per_variant():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("eager")
    model = tiny_model(seed=50, n_layers=3)
    compile_repeated_block(model, backend=counter)
    worst = run_calls(model, tiny_model(seed=50, n_layers=3))
    # at most one graph per (batch 1 | batch >= 2) x (key mask | none); 3 layers and 6 calls share them
    assert counter.frame_count <= 3, counter.frame_count
    first = counter.frame_count
    run_calls(model, tiny_model(seed=50, n_layers=3))  # more steps, other caption lengths: nothing new
    assert counter.frame_count == first
    assert worst < 1e-5


def test_real_arithmetic_rope_used_under_compile_is_bitwise_the_complex_one():
    pos = torch.randint(0, 300, (2, 40, 3))
    freqs = rope_frequencies(pos, (4, 4, 4), 10000.0)
    x = torch.randn(2, 3, 40, 12)
    eager = apply_rope(x, freqs)
    compiled = torch.compile(apply_rope, backend="eager", fullgraph=True)(x, freqs)
    assert torch.equal(eager, compiled)


@pytest.mark.skipif(
    not os.environ.get("NEWBIE_TEST_INDUCTOR") or shutil.which("gcc") is None,
    reason="inductor on this 2-core CPU takes minutes to compile: set NEWBIE_TEST_INDUCTOR=1 (needs gcc)",
)
def test_inductor_matches_eager():
    torch._dynamo.reset()
    model = tiny_model(seed=51, n_layers=2)
    compile_repeated_block(model)
    assert run_calls(model, tiny_model(seed=51, n_layers=2)) < 1e-5
