"""Image to image on the official sampler: where a partial run starts, noising, inpaint blending, hires sizes.

Strength follows ComfyUI's ``denoise`` rule exactly, so the pack's sampler node and this module start at the
same point of the same grid: with ``steps`` steps and strength ``s < 1`` the schedule is built for
``int(steps / s)`` steps and only its last ``steps`` steps run. Strength 1 is text-to-image from the same noise;
strength 0 runs no step at all. The run starts from the flow path at the first time of that slice,
``x_t = t x0 + (1 - t) noise`` (t = 0 is noise).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import sampling
from .errors import ConfigError

#: Default strengths when the flag is omitted (light touch for img2img, full repaint inside a mask).
IMG2IMG_STRENGTH = 0.6
INPAINT_STRENGTH = 1.0
HIRES_STRENGTH = 0.35
HIRES_MODES = ("pixel", "latent")
MAX_HIRES_SCALE = 4.0


def denoise_schedule(steps: int, strength: float) -> tuple[int, int]:
    """``(grid_steps, start)``: build a grid of ``grid_steps`` steps and run it from index ``start``.

    ``grid_steps - start == steps`` for any strength in (0, 1]; strength <= 0 gives ``start == grid_steps`` (no step).
    """
    if strength >= 1.0:
        return steps, 0
    if strength <= 0.0:
        return steps, steps
    total = max(int(steps / strength), steps)
    return total, total - steps


def strength_times(steps: int, strength: float, shift: float = 6.0, solver: str = "midpoint") -> torch.Tensor:
    """The slice of ``solver``'s official shifted grid that a run of ``steps`` steps at ``strength`` covers."""
    total, start = denoise_schedule(steps, strength)
    return sampling.solver_times(solver, total, shift)[start:]


def noised(x0: torch.Tensor, noise: torch.Tensor, t: float) -> torch.Tensor:
    """The point at time ``t`` on the straight path from ``noise`` (t = 0) to ``x0`` (t = 1)."""
    return t * x0 + (1.0 - t) * noise


# ------------------------------------------------------------------------------------ inpainting


def feathered(mask: torch.Tensor, feather: int) -> torch.Tensor:
    """Soft repaint weights in [0, 1] from a pixel mask ``[b, 1, h, w]`` (1 = repaint).

    The mask is grown by half the feather and blurred over the other half, so everything inside it stays fully
    repainted, the weight falls linearly to 0 outside, and pixels farther than ``feather`` from the mask get 0.
    """
    mask = mask.clamp(0, 1)
    r = feather // 2
    if r <= 0:
        return mask
    k = 2 * r + 1
    grown = F.max_pool2d(mask, k, stride=1, padding=r)
    # every pixel within r of a point is in that point's max window, so the blur never drops below the mask
    return F.avg_pool2d(grown, k, stride=1, padding=r, count_include_pad=False)


def latent_mask(soft: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """Latent-resolution mask: a latent cell is free wherever any pixel it covers is (partly) repainted."""
    return F.max_pool2d(soft, factor)


def pinned_velocity(velocity, x0: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor):
    """Inpainting as a velocity field, so every solver in the registry does it without knowing about masks.

    In the known region the returned velocity is the straight path's own, ``x0 - noise``: a run that starts on
    the noised original (as img2img does) stays on it at every step and every solver stage (all our solvers,
    DPM-Solver++ included, are exact on straight paths), so the model always sees it there, and it lands on ``x0``.
    """
    path_velocity = x0 - noise

    def pinned(x: torch.Tensor, t: float) -> torch.Tensor:
        return mask * velocity(x, t) + (1.0 - mask) * path_velocity

    return pinned


def paste_back(pixels: torch.Tensor, original: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Blend the decoded image into the original: where ``soft == 0`` the original's pixels come back exactly."""
    return torch.where(soft > 0, soft * pixels + (1.0 - soft) * original, original)


# ------------------------------------------------------------------------------------ hires


def hires_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The second pass's size: ``scale`` times each side, rounded to the nearest multiple of 16."""
    return max(16, round(width * scale / 16) * 16), max(16, round(height * scale / 16) * 16)


def hires_shift(shift: float, width: int, height: int, new_width: int, new_height: int) -> float:
    """Time shift for the larger image: scaled by the square root of the token-count ratio.

    A given noise level hides less of a larger image (more tokens average the noise away), so the schedule is
    shifted further towards noise, by ``sqrt(tokens_new / tokens_old)`` (the resolution rule of Esser et al.
    2024, "Scaling Rectified Flow Transformers", section 5.3.2, on the same ``s t / (1 + (s - 1) t)`` curve).
    """
    return shift * math.sqrt((new_width * new_height) / (width * height))


def upscale_pixels(pixels: torch.Tensor, width: int, height: int) -> torch.Tensor:
    return F.interpolate(pixels.float(), size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)


def upscale_latents(latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
    return F.interpolate(latents.float(), size=(height // 8, width // 8), mode="bilinear", align_corners=False)


# ------------------------------------------------------------------------------------ settings and files


def effective_strength(settings) -> float:
    if settings.strength is not None:
        return settings.strength
    return INPAINT_STRENGTH if settings.mask else IMG2IMG_STRENGTH


def _same(name: str) -> str:
    return name


def flag_label(name: str) -> str:
    """How the CLI names a setting in messages: ``hires_scale`` -> ``--hires-scale``."""
    return "--" + name.replace("_", "-")


def _range(label: str, value, lo, hi) -> None:
    if not lo <= value <= hi:
        raise ConfigError(f"{label} must be between {lo:g} and {hi:g}, got {value:g}")


def check_settings(settings, label=_same) -> None:
    """Numbers only (no file access): raises ConfigError naming the setting (``label(field)``) and the value."""
    L = label  # noqa: N806 - reads like the message
    if settings.strength is not None:
        if not settings.init_image:
            raise ConfigError(f"{L('strength')} applies to an init image; give {L('init_image')} (or leave it unset)")
        _range(L("strength"), settings.strength, 0.0, 1.0)
    if settings.mask and not settings.init_image:
        raise ConfigError(f"{L('mask')} needs an init image to repaint; give {L('init_image')}")
    if not 0 <= settings.mask_feather <= 256:
        raise ConfigError(f"{L('mask_feather')} must be between 0 and 256 pixels, got {settings.mask_feather}")
    _range(L("hires_scale"), settings.hires_scale, 1.0, MAX_HIRES_SCALE)
    _range(L("hires_strength"), settings.hires_strength, 0.0, 1.0)
    if settings.hires_steps is not None and not 1 <= settings.hires_steps <= 1000:
        raise ConfigError(f"{L('hires_steps')} must be between 1 and 1000, got {settings.hires_steps}")
    if settings.hires_mode not in HIRES_MODES:
        raise ConfigError(
            f"{L('hires_mode')} {settings.hires_mode!r} is not known; choose one of: {', '.join(HIRES_MODES)}"
        )
    if settings.hires_scale > 1.0 and settings.mask:
        raise ConfigError(
            f"{L('mask')} and {L('hires_scale')} cannot be combined: inpaint first, then run the hires pass on that PNG"
        )
    if settings.hires_scale > 1.0:
        w, h = hires_size(settings.width, settings.height, settings.hires_scale)
        if w * h > 4096 * 4096:
            raise ConfigError(f"hires size {w}x{h} is too large (at most 4096x4096 pixels)")


def _open_image(path: str, what: str):
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {path}: file not found")
    try:
        img = Image.open(p)
        img.load()
    except (OSError, UnidentifiedImageError) as exc:
        raise ConfigError(f"{what} {path}: cannot read it as an image ({exc})") from None
    return img


def file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class ImageInputs:
    """The init image (and mask) as tensors at the run's size: pixels ``[1, 3, h, w]`` and mask ``[1, 1, h, w]``."""

    pixels: torch.Tensor
    mask: torch.Tensor | None
    source_size: tuple[int, int]


def image_size(path: str, label=_same) -> tuple[int, int]:
    """The init image's size, checked readable; the run's default size is it rounded down to multiples of 16."""
    return _open_image(path, label("init_image")).size


def default_size(size: tuple[int, int]) -> tuple[int, int]:
    return max(16, size[0] // 16 * 16), max(16, size[1] // 16 * 16)


def load_inputs(settings, label=_same) -> ImageInputs | None:
    """Read and check the init image and mask of ``settings`` (ConfigError naming the file); None for text-to-image."""
    if not settings.init_image:
        return None
    from PIL import Image

    img = _open_image(settings.init_image, label("init_image"))
    size = img.size
    mask_img = None
    if settings.mask:
        mask_img = _open_image(settings.mask, label("mask"))
        if mask_img.size != size:
            raise ConfigError(
                f"{label('mask')} {settings.mask} is {mask_img.size[0]}x{mask_img.size[1]} but "
                f"{label('init_image')} {settings.init_image} is {size[0]}x{size[1]}; they must be the same size"
            )
    target = (settings.width, settings.height)
    rgb = img.convert("RGB")
    if rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.LANCZOS)
    pixels = _to_tensor(rgb)
    mask = None
    if mask_img is not None:
        gray = mask_img.convert("L")
        if gray.size != target:
            gray = gray.resize(target, Image.Resampling.BILINEAR)
        mask = _to_tensor(gray)
    return ImageInputs(pixels, mask, size)


def _to_tensor(img) -> torch.Tensor:
    import numpy as np

    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).float() / 255.0
    return (arr[None, None] if arr.ndim == 2 else arr.permute(2, 0, 1)[None]).contiguous()


def _register_with_the_shared_validator() -> None:
    """The image settings run inside ``GenerationSettings.validate`` (newbie_core.validation), like every other one."""
    from . import validation

    @validation.setting_check("init_image")
    def _image_settings(_value, label: str, settings) -> None:
        # the shared validator passes this field's label; the CLI's are flags, Python callers' are field names
        check_settings(settings, flag_label if label.startswith("--") else _same)


_register_with_the_shared_validator()
