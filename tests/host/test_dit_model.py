"""The loader node's MODEL inside real ComfyUI: stock sampling, core's conditioning, LoRA, core parity."""

from __future__ import annotations

import pytest
import torch
from dit_helpers import inputs, save_checkpoint, tiny_model

from newbie_core.conventions import t_from_sigma


@pytest.fixture()
def tiny_ckpt(models_dir):
    model = tiny_model(seed=31)
    save_checkpoint(model, models_dir / "diffusion_models" / "newbie_tiny.safetensors")
    return model


def load(node_classes, weight_dtype="fp32"):
    out = node_classes["NewBieDiTLoader"].execute("newbie_tiny.safetensors", weight_dtype)
    return out.result[0]


def conditioning(cfg, length, seed, with_mask=True):
    gen = torch.Generator().manual_seed(seed)
    cond = torch.randn(1, length, cfg.cap_feat_dim, generator=gen)
    extras = {"pooled_output": torch.randn(1, cfg.clip_text_dim, generator=gen)}
    if with_mask:
        extras["attention_mask"] = torch.ones(1, length, dtype=torch.long)
    return [[cond, extras]]


def test_loader_lists_newbie_files_first(node_classes, tiny_ckpt, models_dir):
    (models_dir / "diffusion_models" / "aaa_other.safetensors").write_bytes(b"")
    schema = node_classes["NewBieDiTLoader"].define_schema()
    options = schema.inputs[0].options
    assert options[0] == "newbie_tiny.safetensors"


def test_apply_model_equals_core_velocity_convention(node_classes, tiny_ckpt, comfy):
    patcher = load(node_classes)
    cfg = tiny_ckpt.config
    x, _, cap, pooled = inputs(cfg, batch=1, h=8, w=8)
    sigma = torch.tensor([0.7])
    denoised = patcher.model.apply_model(x, sigma, c_crossattn=cap, clip_text_pooled=pooled)
    velocity = tiny_ckpt(x, t_from_sigma(sigma), cap, None, pooled)
    # flow CONST: denoised = x - sigma * (-v)
    assert torch.allclose(denoised, x + sigma * velocity, atol=1e-5)


def test_odd_latent_is_padded_and_cropped(node_classes, tiny_ckpt):
    patcher = load(node_classes)
    cfg = tiny_ckpt.config
    x, _, cap, pooled = inputs(cfg, batch=1, h=7, w=9)
    sigma = torch.tensor([0.5])
    out = patcher.model.apply_model(x, sigma, c_crossattn=cap, clip_text_pooled=pooled)
    assert out.shape == (1, 16, 7, 9)
    # independent: wrap the latent around to 8x10 (patch 2), run the plain model, keep the top-left 7x9
    p = cfg.patch_size
    wrapped = torch.cat([x, x[..., : (-x.shape[-1]) % p]], dim=-1)
    wrapped = torch.cat([wrapped, wrapped[..., : (-x.shape[-2]) % p, :]], dim=-2)
    assert wrapped.shape[-2:] == (8, 10)
    velocity = tiny_ckpt(wrapped, t_from_sigma(sigma), cap, None, pooled)[..., :7, :9]
    assert torch.allclose(out, x + sigma * velocity, atol=1e-5)


def test_stock_sampler_runs_with_core_style_conditioning(node_classes, tiny_ckpt, comfy):
    import comfy.sample

    patcher = load(node_classes)
    cfg = tiny_ckpt.config
    positive = conditioning(cfg, 7, seed=1)
    negative = conditioning(cfg, 3, seed=2, with_mask=False)  # core omits all-ones masks
    latent = torch.zeros(1, 16, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 42)
    out = comfy.sample.sample(
        patcher, noise, 3, 4.0, "euler", "simple", positive, negative, latent, denoise=1.0, seed=42
    )
    assert out.shape == (1, 16, 8, 8)
    assert torch.isfinite(out).all()
    again = comfy.sample.sample(
        patcher, noise, 3, 4.0, "euler", "simple", positive, negative, latent, denoise=1.0, seed=42
    )
    assert torch.equal(out, again)


def test_cond_and_uncond_of_different_lengths_batch_exactly(node_classes, tiny_ckpt, comfy):
    """Our CaptionCond pads so cond/uncond share a forward; the result must equal separate runs."""
    patcher = load(node_classes)
    cfg = tiny_ckpt.config
    x = torch.randn(1, 16, 8, 8)
    sigma = torch.tensor([0.6])
    model_conds = []
    for length, seed in ((6, 3), (2, 4)):
        ((cond, extras),) = conditioning(cfg, length, seed)
        model_conds.append(patcher.model.extra_conds(cross_attn=cond, **extras))
    assert model_conds[0]["c_crossattn"].can_concat(model_conds[1]["c_crossattn"])
    batched = {k: model_conds[0][k].concat([model_conds[1][k]]) for k in ("c_crossattn", "attention_mask")}
    pooled = torch.cat([model_conds[0]["clip_text_pooled"].cond, model_conds[1]["clip_text_pooled"].cond])
    both = patcher.model.apply_model(
        x.repeat(2, 1, 1, 1),
        sigma.repeat(2),
        c_crossattn=batched["c_crossattn"],
        attention_mask=batched["attention_mask"],
        clip_text_pooled=pooled,
    )
    for i in range(2):
        alone = patcher.model.apply_model(
            x,
            sigma,
            c_crossattn=model_conds[i]["c_crossattn"].cond,
            clip_text_pooled=model_conds[i]["clip_text_pooled"].cond,
        )
        assert torch.allclose(both[i : i + 1], alone, atol=1e-5)


def test_stock_lora_loader_patches_our_weights(node_classes, tiny_ckpt, comfy):
    import comfy.sd

    patcher = load(node_classes)
    w = tiny_ckpt.layers[0].attention.qkv.weight
    up, down = torch.randn(w.shape[0], 2) * 0.1, torch.randn(2, w.shape[1]) * 0.1
    lora = {
        "diffusion_model.layers.0.attention.qkv.lora_up.weight": up,
        "diffusion_model.layers.0.attention.qkv.lora_down.weight": down,
    }
    patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora, 0.5, 0)
    import comfy.model_management as mm

    mm.load_models_gpu([patched])
    got = patched.model.diffusion_model.layers[0].attention.qkv.weight
    assert torch.allclose(got, w + 0.5 * up @ down, atol=1e-6)
    mm.unload_all_models()


def test_matches_core_nextdit_on_identical_weights(node_classes, tiny_ckpt, comfy):
    """Core's NextDiT (Lumina2/NewBie) on our weights: same math up to its different q/k-norm eps."""
    import inspect

    import comfy.ops
    from comfy.ldm.lumina.model import NextDiT as CoreNextDiT

    if "clip_text_dim" not in inspect.signature(CoreNextDiT.__init__).parameters:
        pytest.skip("this ComfyUI predates core's NewBie support (its NextDiT has no clip_text_dim)")
    cfg = tiny_ckpt.config
    core = CoreNextDiT(
        patch_size=2,
        in_channels=16,
        dim=cfg.dim,
        n_layers=cfg.n_layers,
        n_refiner_layers=cfg.n_refiner_layers,
        n_heads=cfg.n_heads,
        n_kv_heads=cfg.n_kv_heads,
        ffn_dim_multiplier=4.0,
        multiple_of=32,
        norm_eps=cfg.norm_eps,
        qk_norm=True,
        cap_feat_dim=cfg.cap_feat_dim,
        axes_dims=list(cfg.axes_dims),
        axes_lens=[1024, 512, 512],
        clip_text_dim=cfg.clip_text_dim,
        operations=comfy.ops.disable_weight_init,
        dtype=torch.float32,
    )
    missing, unexpected = core.load_state_dict(tiny_ckpt.state_dict(), strict=False)
    assert missing == [] and set(unexpected) <= {"norm_final.weight"}
    patcher = load(node_classes)
    x, _, cap, pooled = inputs(cfg, batch=1, h=8, w=6)
    sigma = torch.tensor([0.4])
    ours = patcher.model.diffusion_model(x, sigma, cap, clip_text_pooled=pooled)
    theirs = core(x, sigma, cap, cap.shape[1], clip_text_pooled=pooled)
    assert float((ours - theirs).norm() / theirs.norm()) < 1e-3
