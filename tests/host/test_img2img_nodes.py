"""Image-to-image nodes in real ComfyUI: denoise = newbie_core's strength, stock encode/mask, hires, runs from PNGs."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
from conftest import PACK_NAME
from model_files import stock_vae_width, write_tiny_models

from newbie_core import img2img, sampling
from newbie_core.vae import from_dit_latent, to_dit_latent


@pytest.fixture()
def tiny(models_dir):
    return write_tiny_models(models_dir, vae_width=stock_vae_width(), vae_encoder=True)


@pytest.fixture()
def vae(tiny):
    import comfy.sd
    import comfy.utils
    import folder_paths

    return comfy.sd.VAE(sd=comfy.utils.load_torch_file(folder_paths.get_full_path("vae", "ae_tiny.safetensors")))


def _core_nodes():
    """ComfyUI's own nodes.py (the name ``nodes`` is this pack's folder when tests run from the repository root)."""
    import importlib.util
    import sys

    from conftest import COMFYUI_PATH

    if "comfy_core_nodes" not in sys.modules:
        spec = importlib.util.spec_from_file_location("comfy_core_nodes", f"{COMFYUI_PATH}/nodes.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["comfy_core_nodes"] = module
        spec.loader.exec_module(module)
    return sys.modules["comfy_core_nodes"]


def _model(node_classes):
    return node_classes["NewBieDiTLoader"].execute("NewBie-tiny.safetensors", "fp32").result[0]


def _conds():
    gen = torch.Generator().manual_seed(3)
    cap_c, cap_u = torch.randn(1, 5, 64, generator=gen), torch.randn(1, 2, 64, generator=gen)
    pool_c, pool_u = torch.randn(1, 128, generator=gen), torch.randn(1, 128, generator=gen)
    return (cap_c, pool_c, cap_u, pool_u), [[cap_c, {"pooled_output": pool_c}]], [[cap_u, {"pooled_output": pool_u}]]


@pytest.mark.parametrize(
    "steps,denoise,solver",
    [(4, 0.5, "midpoint"), (17, 0.3, "euler"), (5, 0.75, "dpm"), (3, 1.0, "rk4"), (6, 0.0, "midpoint")],
)
def test_denoise_grid_is_newbie_core_strength_grid(node_classes, tiny, steps, denoise, solver):
    comfy_sampling = importlib.import_module(PACK_NAME + ".nodes.comfy_sampling")
    model = _model(node_classes)
    sigmas = comfy_sampling.sigmas_for(model, "newbie_official", steps, denoise, "newbie_" + solver)
    ref = (1.0 - img2img.strength_times(steps, denoise, 6.0, solver)).to(torch.float32)
    assert torch.equal(sigmas, ref)


@pytest.mark.parametrize("sampler,solver", [("newbie_euler", "euler"), ("newbie_midpoint", "midpoint")])
def test_sampler_denoise_runs_newbie_core_img2img(node_classes, tiny, comfy, sampler, solver):
    """Same grid, same first step, same trajectory: the node's denoise is newbie_core's strength."""
    import comfy.sample

    (cap_c, pool_c, cap_u, pool_u), pos, neg = _conds()
    dit = tiny["dit"]
    latent = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(8))  # VAE space, as VAEEncode gives
    noise = comfy.sample.prepare_noise(latent, 5)
    out = (
        node_classes["NewBieSampler"]
        .execute(
            _model(node_classes), pos, neg, {"samples": latent}, 5, 3, 3.0, 0.3, 0.0, sampler, "newbie_official", 0.45
        )
        .result[0]["samples"]
    )

    def two(x, t, with_uncond):
        vc = dit(x, t, cap_c, None, pool_c)
        return vc, (dit(x, t, cap_u, None, pool_u) if with_uncond else None)

    times = img2img.strength_times(3, 0.45, 6.0)
    x = img2img.noised(to_dit_latent(latent), noise, float(times[0]))
    ref = sampling.integrate(lambda x, t: sampling.cfg_velocity(two, x, t, 3.0, 0.3), x, times, solver)
    assert torch.allclose(out, from_dit_latent(ref), atol=1e-4)


def test_denoise_zero_returns_the_latent_untouched(node_classes, tiny):
    (_, _, _, _), pos, neg = _conds()
    latent = {"samples": torch.randn(1, 16, 4, 4)}
    out = node_classes["NewBieSampler"].execute(
        _model(node_classes), pos, neg, latent, 1, 5, 3.0, 0.3, 0.0, "newbie_euler", "newbie_official", 0.0
    )
    assert torch.equal(out.result[0]["samples"], latent["samples"])


def test_stock_vae_encode_and_set_latent_noise_mask_are_honoured(node_classes, tiny, vae, comfy):
    core_nodes = _core_nodes()
    pixels = torch.rand(1, 32, 48, 3, generator=torch.Generator().manual_seed(2))
    (encoded,) = core_nodes.VAEEncode().encode(vae, pixels)
    ours = node_classes["NewBieVAEEncode"].execute(pixels, vae, 512, 64).result[0]
    assert torch.equal(ours["samples"], encoded["samples"]) and encoded["samples"].shape == (1, 16, 4, 6)
    mask = torch.zeros(1, 32, 48)
    mask[:, :16, :24] = 1.0  # repaint the top-left quarter only
    (masked,) = core_nodes.SetLatentNoiseMask().set_mask(encoded, mask)
    (_, _, _, _), pos, neg = _conds()
    out = node_classes["NewBieSampler"].execute(
        _model(node_classes), pos, neg, masked, 4, 3, 3.0, 0.3, 0.0, "newbie_midpoint", "newbie_official", 0.7
    )
    samples = out.result[0]["samples"]
    keep = torch.ones(1, 16, 4, 6, dtype=torch.bool)
    keep[:, :, :2, :3] = False
    assert torch.allclose(samples[keep], encoded["samples"][keep], atol=1e-4)
    assert (samples[~keep] - encoded["samples"][~keep]).abs().mean() > 0.05


def test_vae_encode_falls_back_to_tiles_on_out_of_memory_only(node_classes, vae):
    calls = []

    class OOMOnWholeEncode:
        def encode(self, pixels):
            calls.append("encode")
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

        def encode_tiled(self, pixels, tile_x, tile_y, overlap):
            calls.append(("tiled", tile_x, tile_y, overlap))
            return vae.encode_tiled(pixels, tile_x=tile_x, tile_y=tile_y, overlap=overlap)

    pixels = torch.rand(1, 64, 64, 4)
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        latent = node_classes["NewBieVAEEncode"].execute(pixels, OOMOnWholeEncode(), 256, 128).result[0]
    assert latent["samples"].shape == (1, 16, 8, 8)
    assert calls == ["encode", ("tiled", 256, 256, 64)]

    class Broken:
        def encode(self, pixels):
            raise RuntimeError("bad channels")

    with pytest.raises(RuntimeError, match="bad channels"):
        node_classes["NewBieVAEEncode"].execute(pixels, Broken(), 256, 64)


@pytest.mark.parametrize("method", ["latent", "pixel"])
def test_hires_fix_doubles_the_size_and_is_seeded(node_classes, tiny, vae, method):
    (_, _, _, _), pos, neg = _conds()
    model = _model(node_classes)
    first = {"samples": torch.randn(1, 16, 4, 6, generator=torch.Generator().manual_seed(1))}

    def hires(seed, strength=0.4, **kw):
        args = dict(samples=first, vae=vae, **kw)
        node = node_classes["NewBieHiresFix"]
        return node.execute(model, pos, neg, seed, 2, 3.0, 0.3, 0.0, "newbie_euler", 2.0, strength, method, **args)

    import comfy.sample

    seen = []
    real = comfy.sample.sample_custom

    def recording(*args, **kwargs):
        seen.append(args[4].clone())
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(comfy.sample, "sample_custom", recording)
        a, b, c = (hires(s).result[0]["samples"] for s in (1, 1, 2))
    assert a.shape == (1, 16, 8, 12)
    # 4x the tokens -> shift 6 * sqrt(4) = 12; strength 0.4 of a 2-step run -> the last 2 steps of a 5-step grid
    assert torch.equal(seen[0], (1.0 - img2img.strength_times(2, 0.4, 12.0)).to(torch.float32))
    assert torch.equal(a, b) and not torch.equal(a, c)
    if method == "latent":  # strength 0: only the upscale
        up = hires(1, strength=0.0).result[0]["samples"]
        assert torch.equal(up, img2img.upscale_latents(first["samples"], 96, 64))


def test_hires_fix_says_what_is_missing(node_classes, tiny):
    (_, _, _, _), pos, neg = _conds()
    node = node_classes["NewBieHiresFix"]
    args = (_model(node_classes), pos, neg, 1, 2, 3.0, 0.3, 0.0, "newbie_euler", 2.0, 0.4)
    with pytest.raises(ValueError, match="connect the first pass's latent \\(samples\\) or an image"):
        node.execute(*args, "latent")
    with pytest.raises(ValueError, match="pixel upscaling needs the VAE; connect it"):
        node.execute(*args, "pixel", samples={"samples": torch.zeros(1, 16, 4, 4)})


def test_load_run_from_image_reads_cli_and_comfyui_pngs(node_classes, tmp_path, monkeypatch):
    import folder_paths
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    monkeypatch.setattr(folder_paths, "get_input_directory", lambda: str(tmp_path))
    cli = PngInfo()
    settings = {"prompt": "<caption>a dog</caption>", "negative_prompt": "lowres", "seed": 7, "steps": 9, "cfg": 4.0}
    cli.add_itxt("newbie", json.dumps({**settings, "cfg_trunc": 0.2, "renorm": 1.0, "width": 832, "height": 1216}))
    Image.new("RGB", (8, 8)).save(tmp_path / "cli.png", pnginfo=cli)
    node = node_classes["NewBieLoadRunFromImage"]
    assert node.validate_inputs("cli.png") is True
    assert node.execute("cli.png").result == ("<caption>a dog</caption>", "lowres", 7, 9, 4.0, 0.2, 1.0, 832, 1216)
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(ValueError, match="NewBie Load Run From Image: .*plain.png: no NewBie run in this PNG"):
        node.execute("plain.png")
    assert node.validate_inputs("gone.png") == "NewBie Load Run From Image: gone.png is not in the input folder"
    schema = node.define_schema()
    assert [o.id for o in schema.outputs] == [
        "prompt",
        "negative",
        "seed",
        "steps",
        "cfg",
        "cfg_trunc",
        "renorm",
        "width",
        "height",
    ]
