"""Issue 9 in the real host: fp16 picked without bf16, fp8 storage + fp16 compute, low-VRAM partial loading,
grouped-query attention through core's dispatcher, core's EasyCache/LazyCache on our MODEL."""

from __future__ import annotations

import pytest
import torch
from dit_helpers import inputs, save_checkpoint, tiny_model
from test_precision import overflow_model

from newbie_core.conventions import t_from_sigma


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture()
def ckpt(models_dir):
    model = tiny_model(seed=31)
    save_checkpoint(model, models_dir / "diffusion_models" / "newbie_tiny.safetensors")
    return model


@pytest.fixture()
def no_bf16(monkeypatch, comfy):
    import comfy.model_management as mm

    monkeypatch.setattr(mm, "should_use_bf16", lambda *a, **k: False)
    monkeypatch.setattr(mm, "should_use_fp16", lambda *a, **k: True)


def load(node_classes, weight_dtype="default", name="newbie_tiny.safetensors"):
    return node_classes["NewBieDiTLoader"].execute(name, weight_dtype).result[0]


def apply(patcher, x, sigma, cap, pooled):
    return patcher.model.apply_model(x, sigma, c_crossattn=cap, clip_text_pooled=pooled)


def test_fp16_is_chosen_without_bf16_and_stays_finite_on_the_overflow_model(node_classes, models_dir, no_bf16):
    model = overflow_model()
    save_checkpoint(model, models_dir / "diffusion_models" / "newbie_overflow.safetensors")
    patcher = load(node_classes, name="newbie_overflow.safetensors")
    assert patcher.model.get_dtype_inference() == torch.float16
    assert patcher.model.diffusion_model.layers[0].attention.qkv.weight.dtype == torch.float16
    x, _, cap, pooled = inputs(model.config, batch=1, h=8, w=8)
    sigma = torch.tensor([0.6])
    out = apply(patcher, x, sigma, cap, pooled)
    wide = overflow_model().double()
    ref = x.double() + sigma.double() * wide(
        x.double(), t_from_sigma(sigma).double(), cap.double(), None, pooled.double()
    )
    bf16 = overflow_model().bfloat16()(x, t_from_sigma(sigma), cap, None, pooled)
    assert torch.isfinite(out).all()
    assert rel_err(out - x, ref - x.double()) <= rel_err(sigma * bf16, ref - x.double())


def test_fp8_storage_computes_in_fp16_without_bf16(node_classes, ckpt, no_bf16):
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("this torch has no float8")
    patcher = load(node_classes, "fp8_e4m3fn")
    assert patcher.model.manual_cast_dtype == torch.float16
    assert patcher.model.diffusion_model.layers[0].feed_forward.w1.weight.dtype == torch.float8_e4m3fn
    seen = set()
    hook = patcher.model.diffusion_model.layers[0].attention.qkv.register_forward_pre_hook(
        lambda _m, a: seen.add(a[0].dtype)
    )
    x, _, cap, pooled = inputs(ckpt.config, batch=1, h=8, w=8)
    out = apply(patcher, x, torch.tensor([0.5]), cap, pooled)
    hook.remove()
    expected = x + 0.5 * ckpt(x, torch.tensor([0.5]), cap, None, pooled)
    assert seen == {torch.float16} and torch.isfinite(out).all()
    assert rel_err(out, expected) < 0.05


def test_low_vram_partial_load_applies_patches_through_operations(node_classes, ckpt, comfy):
    """Core's lowvram path: nothing resident, LoRA-style patches (incl. a norm weight) applied on the fly."""
    patcher = load(node_classes, "fp32").clone()
    gen = torch.Generator().manual_seed(9)
    keys = ("diffusion_model.layers.0.ffn_norm2.weight", "diffusion_model.layers.1.attention.qkv.weight")
    sd = patcher.model.state_dict()
    patcher.add_patches({k: (0.3 * torch.randn(sd[k].shape, generator=gen),) for k in keys}, 1.0)
    x, _, cap, pooled = inputs(ckpt.config, batch=1, h=8, w=8)
    sigma = torch.tensor([0.4])
    cpu = torch.device("cpu")

    patcher.load(cpu, full_load=True)
    full = apply(patcher, x, sigma, cap, pooled)
    patcher.unpatch_model(cpu)
    original = ckpt.layers[0].ffn_norm2.weight
    assert torch.equal(patcher.model.diffusion_model.layers[0].ffn_norm2.weight, original)

    patcher.load(cpu, lowvram_model_memory=1)  # a 1-byte budget: every module goes through the cast path
    dit = patcher.model.diffusion_model
    assert dit.layers[0].ffn_norm2.comfy_cast_weights and len(dit.layers[0].ffn_norm2.weight_function) == 1
    assert dit.layers[1].attention.qkv.comfy_cast_weights
    assert torch.equal(dit.layers[0].ffn_norm2.weight, original)  # the stored weight is never patched in place
    low = apply(patcher, x, sigma, cap, pooled)
    patcher.unpatch_model(cpu)
    assert torch.allclose(low, full, atol=1e-5)
    assert not torch.allclose(full, apply(load(node_classes, "fp32"), x, sigma, cap, pooled), atol=1e-3)


def test_grouped_kv_heads_reach_core_sdpa_without_expansion(node_classes, ckpt, comfy, monkeypatch):
    import comfy.ldm.modules.attention as attention

    pack_module = type(load(node_classes, "fp32").model.diffusion_model).__module__
    import sys

    comfy_model = sys.modules[pack_module]
    monkeypatch.setattr(comfy_model, "_comfy_attention", attention.attention_pytorch)
    calls = []
    monkeypatch.setattr(
        comfy_model, "expand_kv_heads", lambda k, h: calls.append(h) or k.repeat_interleave(h // k.shape[1], 1)
    )
    patcher = load(node_classes, "fp32")
    x, _, cap, pooled = inputs(ckpt.config, batch=1, h=8, w=8)
    out = apply(patcher, x, torch.tensor([0.5]), cap, pooled)
    assert calls == []  # no mask: kv heads go to SDPA grouped
    assert torch.allclose(out, x + 0.5 * ckpt(x, torch.tensor([0.5]), cap, None, pooled), atol=1e-5)


@pytest.mark.parametrize("node", ["EasyCacheNode", "LazyCacheNode"])
def test_core_easycache_and_lazycache_work_with_our_model(node_classes, ckpt, comfy, node):
    import comfy.sample
    from comfy_extras import nodes_easycache

    patcher = load(node_classes, "fp32")
    cfg = ckpt.config
    gen = torch.Generator().manual_seed(4)
    positive = [
        [torch.randn(1, 5, cfg.cap_feat_dim, generator=gen), {"pooled_output": torch.randn(1, 24, generator=gen)}]
    ]
    negative = [
        [torch.randn(1, 3, cfg.cap_feat_dim, generator=gen), {"pooled_output": torch.randn(1, 24, generator=gen)}]
    ]
    latent = torch.zeros(1, 16, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 3)
    calls = []
    hook = patcher.model.diffusion_model.x_embedder.register_forward_hook(lambda *a: calls.append(1))

    def run(model):
        calls.clear()
        out = comfy.sample.sample(model, noise, 12, 3.0, "euler", "simple", positive, negative, latent, seed=3)
        return out, len(calls)

    plain, plain_calls = run(patcher)
    cache_node = getattr(nodes_easycache, node)
    cached, cached_calls = run(cache_node.execute(patcher, 0.5, 0.0, 1.0, False).result[0])
    never, never_calls = run(cache_node.execute(patcher, 0.0, 0.0, 1.0, False).result[0])
    hook.remove()
    assert torch.isfinite(cached).all()
    assert cached_calls < plain_calls  # the cache really skipped our forward on some steps
    assert never_calls == plain_calls and torch.allclose(never, plain, atol=1e-5)


@pytest.mark.parametrize("solver", ["rk4", "dpm", "midpoint"])
def test_sampler_node_solvers_retrace_newbie_core(node_classes, ckpt, comfy, solver):
    """newbie_rk4 / newbie_dpm on the official grid through ComfyUI equal newbie_core's solver registry."""
    import comfy.sample

    from newbie_core import sampling
    from newbie_core.vae import from_dit_latent

    patcher = load(node_classes, "fp32")
    gen = torch.Generator().manual_seed(3)
    cfg = ckpt.config
    cap_c, cap_u = (
        torch.randn(1, 5, cfg.cap_feat_dim, generator=gen),
        torch.randn(1, 2, cfg.cap_feat_dim, generator=gen),
    )
    pool_c, pool_u = torch.randn(1, 24, generator=gen), torch.randn(1, 24, generator=gen)
    pos, neg = [[cap_c, {"pooled_output": pool_c}]], [[cap_u, {"pooled_output": pool_u}]]
    latent = torch.zeros(1, 16, 4, 4)
    noise = comfy.sample.prepare_noise(latent, 5)
    out = (
        node_classes["NewBieSampler"]
        .execute(patcher, pos, neg, {"samples": latent}, 5, 4, 3.0, 0.5, 0.0, f"newbie_{solver}", "newbie_official")
        .result[0]["samples"]
    )

    def two(x, t, with_uncond):
        vc = ckpt(x, t, cap_c, None, pool_c)
        return vc, (ckpt(x, t, cap_u, None, pool_u) if with_uncond else None)

    velocity = lambda x, t: sampling.cfg_velocity(two, x, t, 3.0, 0.5)  # noqa: E731
    ref = sampling.integrate(velocity, noise, sampling.solver_times(solver, 4, 6.0), solver)
    # rk4: its last stage reads the denoiser at SIGMA_FLOOR; dpm: ComfyUI's float32 sigmas round t0 = 1.7e-4 (the
    # official grid is float32 too), while newbie_core keeps the grid in float64
    tolerance = {"rk4": 1e-3, "dpm": 3e-3}.get(solver, 1e-4)
    assert torch.allclose(out, from_dit_latent(ref), atol=tolerance)


def test_loader_compile_option_shares_one_graph_across_sampling_runs(node_classes, ckpt, comfy, monkeypatch):
    import comfy.sample
    from torch._dynamo.testing import CompileCounterWithBackend

    import newbie_core.dit.compile as compile_module

    counter = CompileCounterWithBackend("eager")  # inductor takes minutes on this CPU; the graph logic is the same
    real_compile = torch.compile
    monkeypatch.setattr(
        compile_module.torch, "compile", lambda fn, **kw: real_compile(fn, backend=counter, dynamic=True)
    )
    torch._dynamo.reset()
    compiled = node_classes["NewBieDiTLoader"].execute("newbie_tiny.safetensors", "fp32", True).result[0]
    eager = load(node_classes, "fp32")
    cfg = ckpt.config
    gen = torch.Generator().manual_seed(6)
    positive = [
        [torch.randn(1, 6, cfg.cap_feat_dim, generator=gen), {"pooled_output": torch.randn(1, 24, generator=gen)}]
    ]
    negative = [
        [torch.randn(1, 2, cfg.cap_feat_dim, generator=gen), {"pooled_output": torch.randn(1, 24, generator=gen)}]
    ]
    latent = torch.zeros(1, 16, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 1)

    def run(model, cfg_scale):
        return comfy.sample.sample(model, noise, 3, cfg_scale, "euler", "simple", positive, negative, latent, seed=1)

    out = run(compiled, 4.0)
    first = counter.frame_count
    run(compiled, 1.0)  # CFG off: batch 1, no mask
    run(compiled, 4.0)
    assert 1 <= first and counter.frame_count <= first + 1
    assert torch.allclose(out, run(eager, 4.0), atol=1e-4)
