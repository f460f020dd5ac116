"""Compute dtypes: the DiT follows its parameters, and fp16 stays finite where activations leave fp16's range."""

from __future__ import annotations

import pytest
import torch
from dit_helpers import inputs, reference_cfg, save_checkpoint, tiny_model
from reference_dit import reference_forward

from newbie_core.dit import load_transformer


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def blocks(model):
    return [*model.context_refiner, *model.noise_refiner, *model.layers]


def overflow_model(seed=21):
    """Tiny model scaled like a big DiT's "massive activations": residual stream > 1e5, FFN product > 2e5."""
    model = tiny_model(seed=seed)
    with torch.no_grad():
        for blk in blocks(model):
            blk.ffn_norm2.weight[:3].mul_(5e4)
            blk.attention_norm2.weight[:3].mul_(1e4)
            blk.feed_forward.w1.weight.mul_(200)
            blk.feed_forward.w3.weight.mul_(200)
    return model


def matmul_input_dtypes(model):
    seen = set()
    hooks = [m.register_forward_pre_hook(lambda _m, a: seen.add(a[0].dtype)) for m in (model.layers[0].attention.qkv,)]
    return seen, hooks


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = tiny_model(seed=12)
    return model, save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "m.safetensors")


def test_loaded_model_follows_to_float64_and_equals_the_float64_reference(checkpoint):
    model, path = checkpoint
    loaded = load_transformer(path).to(torch.float64)
    x, t, cap, pooled = inputs(model.config, batch=2, h=6, w=4, cap_len=3, dtype=torch.float64)
    ref = reference_forward(loaded.state_dict(), reference_cfg(loaded), x, t, cap, None, pooled)
    out = loaded(x, t, cap, None, pooled)
    assert out.dtype == torch.float64
    assert rel_err(out, ref) <= 1e-12


@pytest.mark.parametrize(
    "convert,expected", [(lambda m: m.half(), torch.float16), (lambda m: m.bfloat16(), torch.bfloat16)]
)
def test_half_and_back_follow_the_parameters(checkpoint, convert, expected):
    model, path = checkpoint
    loaded = convert(load_transformer(path, dtype="fp32"))
    seen, hooks = matmul_input_dtypes(loaded)
    x, t, cap, pooled = inputs(model.config, batch=1)  # float32 inputs: the parameters decide, not x
    out = loaded(x, t, cap, None, pooled)
    assert seen == {expected} and out.dtype == torch.float32
    seen.clear()
    back = loaded.float().to("cpu")(x, t, cap, None, pooled)
    assert seen == {torch.float32}
    assert rel_err(back, model(x, t, cap, None, pooled)) < 2e-2  # same model, weights rounded once
    for h in hooks:
        h.remove()


def test_fp8_storage_computes_in_bf16_unless_fp16_is_asked(checkpoint):
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("this torch has no float8")
    model, path = checkpoint
    x, t, cap, pooled = inputs(model.config, batch=1)
    for compute, expected in ((None, torch.bfloat16), ("fp16", torch.float16)):
        loaded = load_transformer(path, dtype="fp8_e4m3fn", compute_dtype=compute)
        assert loaded.x_embedder.weight.dtype == torch.float8_e4m3fn
        seen, hooks = matmul_input_dtypes(loaded)
        out = loaded(x, t, cap, None, pooled)
        assert seen == {expected} and torch.isfinite(out).all()
        assert rel_err(out, model(x, t, cap, None, pooled)) < 0.1  # fp8 weights: coarse, but the same model


def test_fp16_is_finite_and_no_worse_than_bf16_on_the_overflow_model():
    model = overflow_model()
    x, t, cap, pooled = inputs(model.config, batch=2, h=8, w=8, cap_len=5)
    wide = overflow_model().double()
    peaks = {"residual": 0.0, "ffn_product": 0.0}

    def on_block(_m, _a, out):
        peaks["residual"] = max(peaks["residual"], float(out.abs().max()))

    def on_w2(_m, args):
        peaks["ffn_product"] = max(peaks["ffn_product"], float(args[0].abs().max()))

    hooks = [b.register_forward_hook(on_block) for b in blocks(wide)]
    hooks += [b.feed_forward.w2.register_forward_pre_hook(on_w2) for b in blocks(wide)]
    wide(x.double(), t.double(), cap.double(), None, pooled.double())
    for h in hooks:
        h.remove()
    assert peaks["residual"] > 1e5 and peaks["ffn_product"] > 2e5  # the test model really leaves fp16's range

    ref = reference_forward(
        model.state_dict(), reference_cfg(model), x.double(), t.double(), cap.double(), None, pooled.double()
    )
    fp16 = overflow_model().half()(x, t, cap, None, pooled)
    bf16 = overflow_model().bfloat16()(x, t, cap, None, pooled)
    assert torch.isfinite(fp16).all()
    assert rel_err(fp16, ref) <= rel_err(bf16, ref)
    assert rel_err(fp16, ref) < 0.05


def test_fp16_matches_float32_on_ordinary_weights():
    model = tiny_model(seed=13)
    x, t, cap, pooled = inputs(model.config, batch=2, cap_len=4)
    full = model(x, t, cap, None, pooled)
    half = tiny_model(seed=13).half()(x, t, cap, None, pooled)
    assert rel_err(half, full) < 5e-3
