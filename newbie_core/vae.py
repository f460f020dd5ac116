"""FLUX.1 16-channel autoencoder (decoder and encoder), native, with tiled decoding and encoding.

Loads the standard ``ae.safetensors`` (ldm key names) and the diffusers ``vae/`` layout
(converted on load). Latent normalisation between VAE space and DiT space lives here only:
``z_dit = (z_vae - SHIFT) * SCALE``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError
from .weights import TensorReader, parse_dtype

SCALE = 0.3611
SHIFT = 0.1159


def to_dit_latent(z_vae: torch.Tensor) -> torch.Tensor:
    return (z_vae - SHIFT) * SCALE


def from_dit_latent(z_dit: torch.Tensor) -> torch.Tensor:
    return z_dit / SCALE + SHIFT


@dataclass(frozen=True)
class VAEConfig:
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 16
    in_channels: int = 3

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32 if c % 32 == 0 else 1, num_channels=c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels (1x1 conv projections)."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = _norm(c)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (t(n).reshape(b, 1, c, h * w).transpose(2, 3) for t in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(out)


class _Mid(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.block_1 = ResnetBlock(c, c)
        self.attn_1 = AttnBlock(c)
        self.block_2 = ResnetBlock(c, c)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class _Down(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class _Up(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = cfg.ch
        for i, mult in enumerate(cfg.ch_mult):
            level = nn.Module()
            cout = cfg.ch * mult
            level.block = nn.ModuleList(ResnetBlock(cin if j == 0 else cout, cout) for j in range(cfg.num_res_blocks))
            if i != len(cfg.ch_mult) - 1:
                level.downsample = _Down(cout)
            cin = cout
            self.down.append(level)
        self.mid = _Mid(cin)
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        cin = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = _Mid(cin)
        self.up = nn.ModuleList([nn.Module() for _ in cfg.ch_mult])
        for i in reversed(range(len(cfg.ch_mult))):
            level = self.up[i]
            cout = cfg.ch * cfg.ch_mult[i]
            level.block = nn.ModuleList(
                ResnetBlock(cin if j == 0 else cout, cout) for j in range(cfg.num_res_blocks + 1)
            )
            if i != 0:
                level.upsample = _Up(cout)
            cin = cout
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, cfg.in_channels, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoEncoder(nn.Module):
    """Images in [-1, 1] <-> VAE latents. Use :meth:`decode_dit` / :meth:`encode_dit` for DiT-space latents."""

    def __init__(self, cfg: VAEConfig = VAEConfig()):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.conv_in.weight.dtype

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Posterior mode (mean), as training used ``latent_dist.mode()``."""
        return self.encoder(image.to(self.dtype)).chunk(2, dim=1)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z.to(self.dtype))

    def encode_dit(self, image: torch.Tensor) -> torch.Tensor:
        return to_dit_latent(self.encode(image).float())

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor, tile: int | None = None, overlap: int = 128) -> torch.Tensor:
        """Images in [0, 1] ``[b, 3, h, w]`` -> DiT latents; ``tile`` (pixels) encodes in blended tiles."""
        if self.encoder is None:
            raise CheckpointError(
                "this VAE file has only the decoder; image to image needs the full FLUX ae.safetensors (with encoder)"
            )
        image = pixels.float() * 2 - 1
        scale = self.config.downscale
        z = self.encode(image) if tile is None else encode_tiled(self.encode, image, tile, overlap, scale)
        return to_dit_latent(z.float())

    @torch.no_grad()
    def decode_dit(self, z_dit: torch.Tensor, tile: int | None = None, overlap: int = 16) -> torch.Tensor:
        """DiT latents -> images in [0, 1]; ``tile`` (latent pixels) decodes in blended tiles to save memory."""
        z = from_dit_latent(z_dit.float())
        x = self.decode(z) if tile is None else decode_tiled(self.decode, z, tile, overlap, self.config.downscale)
        return ((x.float() + 1) / 2).clamp(0, 1)


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool, device) -> torch.Tensor:
    """1-D blend weights: linear ramps over ``overlap`` at inner edges, flat elsewhere."""
    w = torch.ones(n, device=device)
    if overlap > 0:
        ramp = (torch.arange(overlap, device=device, dtype=torch.float32) + 0.5) / overlap
        if not at_start:
            w[:overlap] = ramp[: min(overlap, n)]
        if not at_end:
            w[n - overlap :] = torch.minimum(w[n - overlap :], ramp.flip(0)[-min(overlap, n) :])
    return w


def decode_tiled(decode, z: torch.Tensor, tile: int, overlap: int, scale: int) -> torch.Tensor:
    """Decode overlapping latent tiles and blend them with linear ramps, so there are no seams."""
    return _tiled(decode, z, tile, overlap, scale, 1)


def encode_tiled(encode, image: torch.Tensor, tile: int, overlap: int, scale: int) -> torch.Tensor:
    """Encode overlapping pixel tiles (``tile``, ``overlap`` in pixels, multiples of ``scale``) and blend the latents."""
    tile, overlap = max(tile // scale, 1) * scale, overlap // scale * scale
    return _tiled(encode, image, tile, overlap, 1, scale)


def _tiled(fn, x: torch.Tensor, tile: int, overlap: int, up: int, down: int) -> torch.Tensor:
    """Run ``fn`` (output side = input side * up / down) on overlapping tiles of ``x`` and blend with linear ramps."""
    b, _, h, w = x.shape
    tile = max(tile, 2 * overlap + down)
    stride = tile - overlap
    ys = list(range(0, max(h - overlap, 1), stride)) if h > tile else [0]
    xs = list(range(0, max(w - overlap, 1), stride)) if w > tile else [0]
    oh, ow, o_overlap = h * up // down, w * up // down, overlap * up // down
    out = None
    weight = torch.zeros(1, 1, oh, ow, device=x.device)
    for y in ys:
        for x_ in xs:
            y0, x0 = min(y, max(h - tile, 0)), min(x_, max(w - tile, 0))
            part = fn(x[:, :, y0 : y0 + tile, x0 : x0 + tile]).float()
            th, tw = part.shape[-2:]
            wy = _ramp(th, o_overlap, y0 == 0, y0 + tile >= h, x.device)
            wx = _ramp(tw, o_overlap, x0 == 0, x0 + tile >= w, x.device)
            mask = (wy[:, None] * wx[None, :])[None, None]
            if out is None:
                out = torch.zeros(b, part.shape[1], oh, ow, device=x.device)
            oy, ox = y0 * up // down, x0 * up // down
            out[:, :, oy : oy + th, ox : ox + tw] += part * mask
            weight[:, :, oy : oy + th, ox : ox + tw] += mask
    return out / weight


# ------------------------------------------------------------------------------------ loading


def _diffusers_to_ldm(key: str, n_levels: int) -> str:
    """Map one diffusers AutoencoderKL key onto the ldm/Flux name."""
    k = key
    k = re.sub(r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out.", k)
    k = re.sub(
        r"^(encoder|decoder)\.mid_block\.resnets\.(\d)\.", lambda m: f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.", k
    )
    k = re.sub(r"^(encoder|decoder)\.mid_block\.attentions\.0\.group_norm\.", r"\1.mid.attn_1.norm.", k)
    k = re.sub(r"^(encoder|decoder)\.mid_block\.attentions\.0\.to_(q|k|v)\.", r"\1.mid.attn_1.\2.", k)
    k = re.sub(r"^(encoder|decoder)\.mid_block\.attentions\.0\.to_out\.0\.", r"\1.mid.attn_1.proj_out.", k)
    k = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", k)
    k = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.", r"encoder.down.\1.downsample.conv.", k)
    k = re.sub(
        r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
        lambda m: f"decoder.up.{n_levels - 1 - int(m.group(1))}.block.{m.group(2)}.",
        k,
    )
    k = re.sub(
        r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.",
        lambda m: f"decoder.up.{n_levels - 1 - int(m.group(1))}.upsample.conv.",
        k,
    )
    return k.replace(".conv_shortcut.", ".nin_shortcut.")


def _vae_file(path: Path) -> Path:
    if path.is_dir():
        for candidate in (
            path / "vae" / "diffusion_pytorch_model.safetensors",
            path / "diffusion_pytorch_model.safetensors",
            path / "ae.safetensors",
        ):
            if candidate.is_file():
                return candidate
        raise CheckpointError(
            f"{path}: no VAE weights found (expected ae.safetensors or vae/diffusion_pytorch_model.safetensors)"
        )
    return path


def load_vae(path, dtype=None, device="cpu") -> AutoEncoder:
    """Load the FLUX VAE from ``ae.safetensors`` or a diffusers ``vae/`` folder (config inferred from shapes)."""
    file = _vae_file(Path(path))
    reader = TensorReader.open([file])
    keys = list(reader.tensors)
    prefix = next(
        (p for p in ("first_stage_model.", "vae.", "") if any(k.startswith(p + "decoder.conv_in") for k in keys)), None
    )
    if prefix is None:
        from .file_kinds import FLUX_VAE, wrong_file_hint

        hint = wrong_file_hint(FLUX_VAE, {k: v.shape for k, v in reader.tensors.items()})
        raise CheckpointError(
            f"{file}: not a VAE file (no 'decoder.conv_in.weight'; first keys: {', '.join(sorted(keys)[:3])}){hint}"
        )
    shapes = {k[len(prefix) :]: v.shape for k, v in reader.tensors.items() if k.startswith(prefix)}
    diffusers = any(".up_blocks." in k or ".down_blocks." in k for k in shapes)
    z = shapes["decoder.conv_in.weight"][1]
    if z != 16:
        raise CheckpointError(f"{file}: VAE has {z} latent channels; NewBie needs the 16-channel FLUX VAE")
    ch = (
        shapes["encoder.conv_in.weight"][0]
        if "encoder.conv_in.weight" in shapes
        else shapes["decoder.conv_out.weight"][1]
    )
    level_pat = r"^encoder\.down_blocks\.(\d+)\." if diffusers else r"^encoder\.down\.(\d+)\."
    levels = sorted({int(m.group(1)) for k in shapes if (m := re.match(level_pat, k))})
    mults = []
    for i in levels:
        conv = (
            f"encoder.down_blocks.{i}.resnets.0.conv1.weight" if diffusers else f"encoder.down.{i}.block.0.conv1.weight"
        )
        mults.append(shapes[conv][0] // ch)
    dec_pat = r"^decoder\.up_blocks\.0\.resnets\.(\d+)\." if diffusers else r"^decoder\.up\.0\.block\.(\d+)\."
    dec_blocks = {int(m.group(1)) for k in shapes if (m := re.match(dec_pat, k))}
    res_blocks = max(dec_blocks) if dec_blocks else VAEConfig.num_res_blocks  # the decoder has one extra per level
    cfg = VAEConfig(ch=ch, ch_mult=tuple(mults) or VAEConfig.ch_mult, num_res_blocks=res_blocks, z_channels=z)

    model = AutoEncoder(cfg)
    expected = model.state_dict()
    state = {}
    for key in reader.tensors:
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if diffusers:
            name = _diffusers_to_ldm(name, len(cfg.ch_mult))
        if name not in expected:
            continue  # quant convs and other extras the FLUX VAE does not use
        tensor = reader.get(key)
        if tensor.ndim == 2 and expected[name].ndim == 4:  # diffusers attention projections are Linear
            tensor = tensor[:, :, None, None]
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{file}: VAE key {key!r} has shape {list(tensor.shape)}, expected {list(expected[name].shape)}"
            )
        state[name] = tensor
    missing = sorted(set(expected) - set(state))
    if any(k.startswith("decoder.") for k in missing):
        raise CheckpointError(
            f"{file}: missing VAE keys: {', '.join(k for k in missing if k.startswith('decoder.'))[:400]}"
        )
    if missing:  # a decoder-only file: fine for text-to-image
        model.encoder = None
    model.load_state_dict(state, strict=False)
    reader.close()
    target = parse_dtype(dtype)
    return model.to(device=device, dtype=target or torch.float32).eval().requires_grad_(False)
