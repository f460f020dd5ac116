"""CPU sampling from oneDNN-packed Linear weights: same numbers, weights restored exactly, one copy in memory."""

from __future__ import annotations

import contextlib

import pytest
import torch
from dit_helpers import inputs, reference_cfg, tiny_model
from reference_dit import reference_forward

from newbie_core import memory
from newbie_core.dit import NextDiT, cpu_pack, tiny_config
from newbie_core.dit.cpu_pack import PackedLinear, packed_for_cpu, packing_works
from newbie_core.dit.layers import casting_operations
from newbie_core.pipeline import GenerationSettings, NewBiePipeline

needs_packing = pytest.mark.skipif(
    not packing_works(torch.float32), reason="this torch build or CPU has no oneDNN packed Linear"
)


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def dense_linears(model):
    return [m for m in model.modules() if type(m) is torch.nn.Linear]


@needs_packing
def test_packed_forward_matches_the_float64_reference():
    model = tiny_model(seed=6)
    x, t, cap, pooled = inputs(model.config, batch=2, h=8, w=8, cap_len=4)
    ref = reference_forward(
        model.state_dict(), reference_cfg(model), x.double(), t.double(), cap.double(), None, pooled.double()
    )
    n_linear = len(dense_linears(model))
    with packed_for_cpu(model) as packed:
        out = model(x, t, cap, None, pooled)
    assert packed == n_linear == 31
    assert rel_err(out, ref) <= 2e-5


@needs_packing
def test_padded_batch_with_key_mask_runs_packed():
    model = tiny_model(seed=4)
    x, t, cap, pooled = inputs(model.config, batch=3, h=6, w=4, cap_len=7)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    dense = model(x, t, cap, mask, pooled)
    with packed_for_cpu(model):
        packed = model(x, t, cap, mask, pooled)
    assert rel_err(packed, dense) <= 1e-5


@pytest.mark.skipif(not packing_works(torch.bfloat16), reason="no oneDNN bf16 kernels on this CPU")
def test_bf16_packed_forward_stays_as_close_to_float64_as_dense_bf16():
    model = tiny_model(seed=6)
    x, t, cap, pooled = inputs(model.config, batch=2, h=8, w=8, cap_len=4)
    ref = reference_forward(
        model.state_dict(), reference_cfg(model), x.double(), t.double(), cap.double(), None, pooled.double()
    )
    model = model.to(torch.bfloat16)
    args = [a.to(torch.bfloat16) for a in (x, t, cap, pooled)]
    dense_err = rel_err(model(args[0], args[1], args[2], None, args[3]), ref)
    with packed_for_cpu(model) as packed:
        packed_err = rel_err(model(args[0], args[1], args[2], None, args[3]), ref)
    assert packed == 31
    assert packed_err <= 1.5 * dense_err + 1e-3


@needs_packing
def test_weights_are_restored_bit_for_bit_into_the_same_modules():
    model = tiny_model(seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    linears = dense_linears(model)
    weights = [m.weight for m in linears]
    with packed_for_cpu(model):
        pass
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert [k for k in before if not torch.equal(after[k], before[k])] == []
    assert dense_linears(model) == linears  # the same module objects
    assert all(m.weight is w for m, w in zip(linears, weights))  # and Parameters, which optimisers or hosts may hold
    assert all(not p.requires_grad and p.layout == torch.strided for p in model.parameters())


@needs_packing
def test_an_input_in_another_dtype_is_refused_with_both_dtypes_named():
    layer = PackedLinear(torch.randn(8, 4), None)
    with pytest.raises(TypeError, match=r"^packed Linear holds torch.float32 weights but got a torch.float64 input$"):
        layer(torch.randn(2, 4, dtype=torch.float64))


@needs_packing
def test_weights_are_restored_when_the_run_raises():
    model = tiny_model(seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(KeyboardInterrupt), packed_for_cpu(model):
        raise KeyboardInterrupt
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)
    assert not any(isinstance(m, PackedLinear) for m in model.modules())


@needs_packing
def test_only_the_packed_copy_exists_while_packed():
    model = tiny_model(seed=1)
    originals = dense_linears(model)
    with packed_for_cpu(model):
        assert dense_linears(model) == []
        assert all(m.weight.numel() == 0 for m in originals)  # the dense storage is released
        packed = [m for m in model.modules() if isinstance(m, PackedLinear)]
        assert sum(m.weight.numel() for m in packed) == sum(m.out_features * m.in_features for m in originals)


def test_layers_that_cast_compute_in_another_dtype_or_are_streamed_are_left_alone():
    fp16_compute = tiny_model(seed=1)
    fp16_compute.compute_dtype = torch.float16
    compiled = tiny_model(seed=1)
    compiled._compiled_block = object()
    casting = NextDiT(tiny_config(), operations=casting_operations).eval().requires_grad_(False)
    streamed = tiny_model(seed=1)
    memory.stream(streamed, "cpu")  # its streamer keeps references to the dense weights it swaps in and out
    for model in (fp16_compute, compiled, casting, streamed):
        with packed_for_cpu(model) as packed:
            assert packed == 0
            assert not any(isinstance(m, PackedLinear) for m in model.modules())


@needs_packing
def test_pipeline_samples_on_cpu_from_packed_weights_and_gives_the_dense_result(monkeypatch):
    settings = GenerationSettings(prompt="a cat", width=64, height=64, steps=3, seed=7)
    pipe = NewBiePipeline.tiny()
    seen = []
    packed = pipe.generate(
        settings,
        progress=lambda i, n: seen.append(any(isinstance(m, PackedLinear) for m in pipe.transformer.modules())),
    )
    assert seen == [True, True, True]
    assert not any(isinstance(m, PackedLinear) for m in pipe.transformer.modules())

    monkeypatch.setattr(cpu_pack, "packed_for_cpu", lambda model: contextlib.nullcontext(0))
    dense = NewBiePipeline.tiny().generate(settings)
    assert packed.latents.shape == dense.latents.shape == (1, 16, 8, 8)
    assert rel_err(packed.latents, dense.latents) <= 1e-5
