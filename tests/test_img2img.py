"""Image to image on the embedded tiny model: start point, noising, CFG on the slice, inpainting, hires, encode."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from newbie_core import img2img, solvers
from newbie_core.errors import CheckpointError, ConfigError
from newbie_core.pipeline import GenerationSettings, NewBiePipeline
from newbie_core.vae import AutoEncoder, VAEConfig, to_dit_latent

SIZE = 32


@pytest.fixture(scope="module")
def pipe():
    return NewBiePipeline.tiny()


@pytest.fixture(scope="module")
def init_png(tmp_path_factory):
    """A smooth colourful picture (not from the model, so "differs from the input" means something)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    arr = np.stack([x * 255 // SIZE, y * 255 // SIZE, (x + y) * 127 // SIZE], -1).astype(np.uint8)
    path = tmp_path_factory.mktemp("img") / "init.png"
    Image.fromarray(arr).save(path)
    return str(path)


def settings(**kw):
    base = dict(prompt="1girl, smile", width=SIZE, height=SIZE, steps=4, seed=3, solver="euler")
    return GenerationSettings(**{**base, **kw})


class Recorder:
    """Records every DiT call's (x, t) (a forward pre-hook) so tests can see where sampling started."""

    def __init__(self):
        self.calls = []

    def __call__(self, _module, args):
        self.calls.append((args[0].clone(), args[1].clone()))


@pytest.fixture()
def recorded(pipe):
    recorder = Recorder()
    handle = pipe.transformer.register_forward_pre_hook(recorder)
    yield recorder
    handle.remove()


def pixels_of(path):
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8).copy())


def init_latent(pipe, path):
    x = pixels_of(path).permute(2, 0, 1)[None].float() / 255.0
    return to_dit_latent(pipe.vae.encode(x * 2 - 1).float())


def ref_start(steps, strength, shift, t_first=0.0):
    """ComfyUI's denoise rule written out: a grid for floor(steps / strength) steps, its last `steps` run."""
    total = steps if strength >= 1 else math.floor(steps / strength)
    grid = [t_first + (1 - t_first) * i / total for i in range(total + 1)]
    grid = [t / (t + shift - shift * t) for t in grid]
    return grid[total - steps :]


@pytest.mark.parametrize(
    "steps,strength,shift,solver",
    [
        (4, 0.5, 6.0, "midpoint"),
        (17, 0.3, 6.0, "euler"),
        (10, 0.75, 3.0, "rk4"),
        (3, 1.0, 6.0, "midpoint"),
        (8, 0.4, 6.0, "dpm"),
    ],
)
def test_start_index_against_reference(steps, strength, shift, solver):
    ref = ref_start(steps, strength, shift, 0.001 if solver == "dpm" else 0.0)  # dpm's grid starts at t = 0.001
    got = img2img.strength_times(steps, strength, shift, solver)
    assert len(got) == steps + 1
    assert torch.allclose(got, torch.tensor(ref, dtype=torch.float64), atol=1e-12)


def test_strength_zero_takes_no_sampling_step(pipe, recorded, init_png):
    result = pipe.generate(settings(init_image=init_png, strength=0.0))
    assert [t for _, t in recorded.calls] == []
    assert torch.allclose(result.latents, init_latent(pipe, init_png), atol=1e-6)


def test_strength_one_equals_text_to_image_from_the_same_noise(pipe, init_png):
    for solver in ("euler", "midpoint"):
        txt = pipe.generate(settings(solver=solver))
        img = pipe.generate(settings(solver=solver, init_image=init_png, strength=1.0))
        assert torch.equal(img.latents, txt.latents)


@pytest.mark.parametrize("solver", ["euler", "midpoint"])
def test_img2img_starts_on_the_noised_latent_with_truncated_cfg(pipe, recorded, init_png, solver):
    """First model input = t0 x0 + (1 - t0) noise at the reference t0; CFG (both halves) only while t < cfg_trunc."""
    steps, strength = 6, 0.5
    s = settings(solver=solver, steps=steps, init_image=init_png, strength=strength, cfg=4.0, cfg_trunc=0.3)
    pipe.generate(s)
    ref = ref_start(steps, strength, 6.0)
    x0 = init_latent(pipe, init_png)
    noise = torch.randn(1, 16, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(3))
    first_x, first_t = recorded.calls[0]
    assert float(first_t[0]) == pytest.approx(ref[0], abs=1e-7)
    assert torch.allclose(first_x[:1], ref[0] * x0 + (1 - ref[0]) * noise, atol=1e-5)
    times = [float(t[0]) for _, t in recorded.calls]
    batches = [x.shape[0] for x, _ in recorded.calls]
    assert len(times) == steps * (1 if solver == "euler" else 2)
    assert batches == [2 if t < 0.3 else 1 for t in times]  # truncation as in text-to-image
    assert 1 in batches and 2 in batches


def test_img2img_equals_a_hand_written_euler_loop_on_the_slice(pipe, init_png):
    s = settings(steps=5, init_image=init_png, strength=0.6, cfg=3.0, cfg_trunc=1.0, renorm=0.0)
    result = pipe.generate(s)
    enc = pipe.text_encoders.encode(["1girl, smile", ""])
    t = ref_start(5, 0.6, 6.0)
    noise = torch.randn(1, 16, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(3))
    x = t[0] * init_latent(pipe, init_png) + (1 - t[0]) * noise
    for i in range(5):
        tc = torch.full((1,), t[i])
        vc = pipe.transformer(x, tc, *[v[:1, : int(enc.mask[0].sum())] for v in (enc.hidden, enc.mask)], enc.pooled[:1])
        vu = pipe.transformer(x, tc, *[v[1:, : int(enc.mask[1].sum())] for v in (enc.hidden, enc.mask)], enc.pooled[1:])
        x = x + (t[i + 1] - t[i]) * (vu + 3.0 * (vc - vu))
    assert torch.allclose(result.latents, x, atol=1e-4)


def test_img2img_is_deterministic_and_differs_from_input_and_fresh_run(pipe, init_png):
    a = pipe.generate(settings(init_image=init_png, strength=0.5))
    b = pipe.generate(settings(init_image=init_png, strength=0.5))
    fresh = pipe.generate(settings())
    assert a.images[0].tobytes() == b.images[0].tobytes()
    assert a.images[0].tobytes() != fresh.images[0].tobytes()
    assert not torch.equal(torch.from_numpy(np.asarray(a.images[0]).copy()), pixels_of(init_png))


@pytest.mark.parametrize("solver", ["euler", "midpoint", "dpm"])
def test_inpaint_keeps_unmasked_pixels_exactly_and_changes_masked_ones(pipe, recorded, init_png, tmp_path, solver):
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[8:20, 10:22] = 255
    mask_path = tmp_path / "mask.png"
    Image.fromarray(mask).save(mask_path)
    s = settings(init_image=init_png, mask=str(mask_path), mask_feather=4, solver=solver, strength=0.8)
    result = pipe.generate(s)
    out = torch.from_numpy(np.asarray(result.images[0]).copy())
    original = pixels_of(init_png)
    soft = img2img.feathered(torch.from_numpy(mask).float()[None, None] / 255, 4)[0, 0]
    outside = soft == 0
    assert outside.sum() > SIZE * SIZE // 2  # beyond the feather: most of the picture
    assert torch.equal(out[outside], original[outside])
    inside = torch.from_numpy(mask > 0)
    changed = (out[inside] != original[inside]).any(-1).float().mean()
    assert changed > 0.9
    # at every model call the known latent cells are on the noised original's path, and end as the init latent
    known = img2img.latent_mask(soft[None, None]) == 0
    assert known.sum() > 0
    x0 = init_latent(pipe, init_png)
    noise = torch.randn(1, 16, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(3))
    k = known.expand_as(x0)
    assert len(recorded.calls) == 4 * solvers.SOLVERS[solver].model_calls_per_step
    for x, t in recorded.calls:
        path = img2img.noised(x0, noise, float(t[0]))
        assert torch.allclose(x[:1][k], path[k], atol=1e-5)
    assert torch.allclose(result.latents[known.expand_as(x0)], x0[known.expand_as(x0)], atol=1e-5)
    # the feather: 2 px grown + 2 px ramp, nothing beyond 4 px from the mask
    assert bool(soft[8:20, 10:22].eq(1).all()) and float(soft[8, 5]) == 0 and 0 < float(soft[8, 7]) < 1


def test_mask_of_another_size_and_missing_files(init_png, tmp_path):
    small = tmp_path / "small.png"
    Image.new("L", (16, 16)).save(small)
    with pytest.raises(ConfigError) as err:
        img2img.load_inputs(settings(init_image=init_png, mask=str(small)))
    assert str(err.value) == (f"mask {small} is 16x16 but init_image {init_png} is 32x32; they must be the same size")
    with pytest.raises(ConfigError, match=r"^init_image /no/such.png: file not found$"):
        img2img.load_inputs(settings(init_image="/no/such.png"))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    with pytest.raises(ConfigError, match=rf"^init_image {junk}: cannot read it as an image"):
        img2img.load_inputs(settings(init_image=str(junk)))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(strength=1.5, init_image="i.png"), "strength must be between 0 and 1, got 1.5"),
        (dict(strength=-0.1, init_image="i.png"), "strength must be between 0 and 1, got -0.1"),
        (dict(strength=0.5), "strength applies to an init image; give init_image (or leave it unset)"),
        (dict(mask="m.png"), "mask needs an init image to repaint; give init_image"),
        (dict(hires_scale=0.5), "hires_scale must be between 1 and 4, got 0.5"),
        (dict(hires_strength=2.0), "hires_strength must be between 0 and 1, got 2"),
        (dict(hires_mode="nearest"), "hires_mode 'nearest' is not known; choose one of: pixel, latent"),
    ],
)
def test_impossible_image_settings(kwargs, message):
    with pytest.raises(ConfigError) as err:
        settings(**kwargs).validate()
    assert str(err.value) == message


@pytest.mark.parametrize("mode", ["pixel", "latent"])
def test_hires_doubles_the_size_and_is_deterministic(pipe, recorded, mode):
    s = settings(hires_scale=2.0, hires_strength=0.5, hires_steps=3, hires_mode=mode)
    a = pipe.generate(s)
    calls = list(recorded.calls)
    b = pipe.generate(s)
    assert a.images[0].size == (2 * SIZE, 2 * SIZE) and a.latents.shape == (1, 16, SIZE // 4, SIZE // 4)
    assert a.images[0].tobytes() == b.images[0].tobytes()
    # second pass: 3 steps at 4x the tokens, on the grid shifted by sqrt(4) = 2 -> shift 12
    hires = [t for x, t in calls if x.shape[-1] == SIZE // 4]
    assert len(hires) == 3
    ref = ref_start(3, 0.5, 12.0)
    assert [float(t[0]) for t in hires] == pytest.approx(ref[:3], abs=1e-7)


def test_hires_size_and_shift_rules():
    assert img2img.hires_size(832, 1216, 1.5) == (1248, 1824)
    assert img2img.hires_size(1000, 1000, 1.5) == (1504, 1504)
    assert img2img.hires_shift(6.0, 1024, 1024, 2048, 2048) == pytest.approx(12.0)
    assert img2img.hires_shift(6.0, 1024, 1024, 1024, 1024) == pytest.approx(6.0)


def test_tiled_encode_matches_whole_encode():
    gen = torch.Generator().manual_seed(5)
    vae = AutoEncoder(VAEConfig(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1))
    with torch.no_grad():
        for name, p in vae.named_parameters():
            fan = p[0].numel() if p.ndim > 1 else 1
            p.copy_(
                1 + 0.1 * torch.randn(p.shape, generator=gen)
                if "norm" in name and name.endswith("weight")
                else torch.randn(p.shape, generator=gen) / fan**0.5
            )
    img = torch.rand(1, 3, 160, 96, generator=gen)
    whole = vae.encode_pixels(img)
    assert torch.equal(vae.encode_pixels(img, tile=256), whole)  # one tile covering everything: the same call
    tiled = vae.encode_pixels(img, tile=64, overlap=32)
    assert tiled.shape == whole.shape == (1, 16, 20, 12)
    assert float((tiled - whole).abs().mean()) < 0.1 * float(whole.abs().mean())  # global attention: tiles see less


def test_decoder_only_vae_names_what_img2img_needs():
    vae = AutoEncoder(VAEConfig(ch=32, ch_mult=(1, 1), num_res_blocks=1))
    vae.encoder = None
    with pytest.raises(CheckpointError, match="only the decoder; image to image needs the full FLUX"):
        vae.encode_pixels(torch.zeros(1, 3, 16, 16))
