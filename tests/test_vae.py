"""FLUX VAE: decoder against a functional reference, both file layouts, tiled decoding, scaling."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from newbie_core.errors import CheckpointError
from newbie_core.vae import SCALE, SHIFT, AutoEncoder, VAEConfig, from_dit_latent, load_vae, to_dit_latent

CFG = VAEConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1)


def random_vae(seed=0):
    gen = torch.Generator().manual_seed(seed)
    vae = AutoEncoder(CFG)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan = p[0].numel() if p.ndim > 1 else 1
                p.copy_(torch.randn(p.shape, generator=gen) / fan**0.5)
    return vae.eval().requires_grad_(False)


# Functional FLUX-VAE pieces written from the architecture notes (ldm key names), independent of newbie_core.vae.


def _gn(sd, x, name):
    b, c, h, w = x.shape
    g = x.reshape(b, 32 if c % 32 == 0 else 1, -1)
    g = (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + 1e-6)
    return g.reshape(b, c, h, w) * sd[name + ".weight"][:, None, None] + sd[name + ".bias"][:, None, None]


def _conv(sd, x, name, pad=1, stride=1):
    return F.conv2d(x, sd[name + ".weight"], sd[name + ".bias"], padding=pad, stride=stride)


def _res(sd, x, name):
    h = _conv(sd, F.silu(_gn(sd, x, name + ".norm1")), name + ".conv1")
    h = _conv(sd, F.silu(_gn(sd, h, name + ".norm2")), name + ".conv2")
    if name + ".nin_shortcut.weight" in sd:
        x = _conv(sd, x, name + ".nin_shortcut", 0)
    return x + h


def _attn(sd, x, name):
    b, c, h, w = x.shape
    n = _gn(sd, x, name + ".norm")
    q, k, v = (_conv(sd, n, f"{name}.{t}", 0).reshape(b, c, h * w) for t in "qkv")
    weights = torch.softmax(q.transpose(1, 2) @ k / c**0.5, dim=-1)  # [b, hw, hw]
    out = (v @ weights.transpose(1, 2)).reshape(b, c, h, w)
    return x + _conv(sd, out, name + ".proj_out", 0)


def _mid(sd, h, side):
    return _res(sd, _attn(sd, _res(sd, h, f"{side}.mid.block_1"), f"{side}.mid.attn_1"), f"{side}.mid.block_2")


def ref_decode(sd, z, cfg=CFG):
    h = _mid(sd, _conv(sd, z, "decoder.conv_in"), "decoder")
    for i in reversed(range(len(cfg.ch_mult))):
        for j in range(cfg.num_res_blocks + 1):
            h = _res(sd, h, f"decoder.up.{i}.block.{j}")
        if i:
            h = _conv(sd, F.interpolate(h, scale_factor=2, mode="nearest"), f"decoder.up.{i}.upsample.conv")
    return _conv(sd, F.silu(_gn(sd, h, "decoder.norm_out")), "decoder.conv_out")


def ref_moments(sd, image, cfg=CFG):
    """Encoder output: [mean | logvar] along channels (the posterior's parameters)."""
    h = _conv(sd, image, "encoder.conv_in")
    for i in range(len(cfg.ch_mult)):
        for j in range(cfg.num_res_blocks):
            h = _res(sd, h, f"encoder.down.{i}.block.{j}")
        if i != len(cfg.ch_mult) - 1:  # asymmetric pad (right/bottom only), then a stride-2 valid conv
            h = _conv(sd, F.pad(h, (0, 1, 0, 1)), f"encoder.down.{i}.downsample.conv", pad=0, stride=2)
    h = _mid(sd, h, "encoder")
    return _conv(sd, F.silu(_gn(sd, h, "encoder.norm_out")), "encoder.conv_out")


def test_decoder_matches_functional_reference():
    vae = random_vae(1).double()
    z = torch.randn(2, 16, 6, 5, dtype=torch.float64)
    assert torch.allclose(vae.decode(z), ref_decode(vae.state_dict(), z), atol=1e-9)


def test_latent_scaling_constants():
    z = torch.randn(1, 16, 4, 4)
    assert torch.allclose(to_dit_latent(z), (z - 0.1159) * 0.3611)
    assert torch.allclose(from_dit_latent(to_dit_latent(z)), z, atol=1e-6)
    assert (SCALE, SHIFT) == (0.3611, 0.1159)


def test_decode_dit_maps_to_unit_range():
    vae = random_vae(2)
    z = torch.randn(1, 16, 4, 4)
    img = vae.decode_dit(z)
    ref = ((ref_decode(vae.state_dict(), from_dit_latent(z)) + 1) / 2).clamp(0, 1)
    assert img.shape == (1, 3, 16, 16) and torch.allclose(img, ref, atol=1e-5)


def test_tiled_decode_has_no_seams():
    vae = random_vae(3)
    z = torch.randn(1, 16, 40, 28)
    whole = vae.decode_dit(z)
    tiled = vae.decode_dit(z, tile=16, overlap=8)
    assert tiled.shape == whole.shape
    diff = (tiled - whole).abs()
    assert float(diff.mean()) < 0.01
    # no seam: the error along tile borders is no worse than elsewhere
    assert float(diff.max()) < 0.15


def test_encoder_returns_the_posterior_mean_not_the_log_variance():
    vae = random_vae(4).double()
    img = torch.rand(2, 3, 16, 12, dtype=torch.float64) * 2 - 1
    moments = ref_moments(vae.state_dict(), img)
    mean, logvar = moments[:, :16], moments[:, 16:]
    z = vae.encode(img)
    assert z.shape == (2, 16, 4, 3)
    assert torch.allclose(z, mean, atol=1e-9)
    assert not torch.allclose(z, logvar, atol=1e-3)  # the two halves really differ for these weights
    assert torch.allclose(vae.encode_dit(img), to_dit_latent(mean).float(), atol=1e-6)


def test_encoder_handles_sizes_that_are_not_a_multiple_of_the_stride():
    """The downsample pads right/bottom only; a symmetric pad would shift every latent by half a pixel."""
    vae = random_vae(6).double()
    img = torch.rand(1, 3, 14, 10, dtype=torch.float64) * 2 - 1
    assert torch.allclose(vae.encode(img), ref_moments(vae.state_dict(), img)[:, :16], atol=1e-9)


def to_diffusers(sd, n_levels):
    """Independent inverse mapping: ldm names -> diffusers AutoencoderKL names."""
    out = {}
    for k, v in sd.items():
        d = k.replace("nin_shortcut", "conv_shortcut")
        d = re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out.", d)
        d = re.sub(r"^(\w+)\.mid\.block_(\d)\.", lambda m: f"{m.group(1)}.mid_block.resnets.{int(m.group(2)) - 1}.", d)
        d = re.sub(r"^(\w+)\.mid\.attn_1\.norm\.", r"\1.mid_block.attentions.0.group_norm.", d)
        d = re.sub(r"^(\w+)\.mid\.attn_1\.(q|k|v)\.", r"\1.mid_block.attentions.0.to_\2.", d)
        d = re.sub(r"^(\w+)\.mid\.attn_1\.proj_out\.", r"\1.mid_block.attentions.0.to_out.0.", d)
        d = re.sub(r"^encoder\.down\.(\d)\.block\.", r"encoder.down_blocks.\1.resnets.", d)
        d = re.sub(r"^encoder\.down\.(\d)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", d)
        d = re.sub(
            r"^decoder\.up\.(\d)\.block\.", lambda m: f"decoder.up_blocks.{n_levels - 1 - int(m.group(1))}.resnets.", d
        )
        d = re.sub(
            r"^decoder\.up\.(\d)\.upsample\.",
            lambda m: f"decoder.up_blocks.{n_levels - 1 - int(m.group(1))}.upsamplers.0.",
            d,
        )
        if "attentions" in d and d.endswith("weight") and "group_norm" not in d:
            v = v[:, :, 0, 0]
        out[d] = v.contiguous()
    return out


def test_ae_safetensors_and_diffusers_layouts_load(tmp_path):
    vae = random_vae(5)
    z = torch.randn(1, 16, 4, 4)
    ae = tmp_path / "ae.safetensors"
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(ae))
    folder = tmp_path / "hf" / "vae"
    folder.mkdir(parents=True)
    save_file(to_diffusers(vae.state_dict(), len(CFG.ch_mult)), str(folder / "diffusion_pytorch_model.safetensors"))
    for source in (ae, tmp_path / "hf"):
        loaded = load_vae(source)
        assert loaded.config == CFG
        assert torch.allclose(loaded.decode_dit(z), vae.decode_dit(z), atol=1e-6)


def test_wrong_vae_is_rejected(tmp_path):
    sd4 = {"decoder.conv_in.weight": torch.zeros(64, 4, 3, 3)}
    path = tmp_path / "sdxl_vae.safetensors"
    save_file(sd4, str(path))
    with pytest.raises(CheckpointError, match=r"VAE has 4 latent channels; NewBie needs the 16-channel FLUX VAE"):
        load_vae(path)
    other = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(1)}, str(other))
    with pytest.raises(
        CheckpointError, match=r"not a VAE file \(no 'decoder.conv_in.weight'; first keys: foo.weight\)"
    ):
        load_vae(other)
