"""Image-to-image nodes: VAE encode with a tiled fallback, a one-node hires second pass, runs read from PNGs.

The maths (start point, noising, hires size and shift) is newbie_core.img2img's; these classes only adapt it to
ComfyUI's latents (VAE space, ``{"samples": ...}``) and sampling.
"""

from __future__ import annotations

import hashlib
import logging
import os

import comfy.model_management as mm
import torch

from ..newbie_core import img2img, png_runs
from ..newbie_core.errors import ConfigError
from ._api import io, schema
from .comfy_sampling import NEWBIE_SAMPLERS, sample_on_sigmas, sampler_names, with_official_guidance
from .latent_vae import _is_oom, tile_inputs
from .sampling import CFG_TRUNC_TIP, RENORM_TIP

log = logging.getLogger("newbie")

UPSCALE_METHODS = ["pixel", "latent"]


def _encode(vae, pixels: torch.Tensor, tile_size: int, overlap: int) -> torch.Tensor:
    """Stock VAE encode; on out-of-memory only, the same in overlapping tiles."""
    pixels = pixels[:, :, :, :3]
    try:
        return vae.encode(pixels)
    except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are handled, the rest re-raised
        if not _is_oom(exc):
            raise
        log.warning("NewBie VAE Encode: out of memory, encoding in %dpx tiles", tile_size)
        mm.soft_empty_cache()
        return vae.encode_tiled(pixels, tile_x=tile_size, tile_y=tile_size, overlap=min(overlap, tile_size // 4))


class NewBieVAEEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="NewBieVAEEncode",
            display_name="NewBie VAE Encode",
            category="NewBie/latent",
            search_aliases=["newbie", "vae encode", "img2img", "tiled"],
            description="Encodes images with a stock VAE (the FLUX ae.safetensors) into the latent NewBie Sampler "
            "starts from for image to image. If the whole image does not fit in memory, it encodes in overlapping "
            "tiles instead of failing.",
            inputs=[
                io.Image.Input("pixels", tooltip="The image to start from (e.g. Load Image)."),
                io.Vae.Input("vae", tooltip="The FLUX.1 16-channel VAE (VAELoader with ae.safetensors)."),
                *tile_inputs(),
            ],
            outputs=[io.Latent.Output(tooltip="The image's latent, same format as stock VAE Encode.")],
        )

    @classmethod
    def execute(cls, pixels, vae, tile_size, overlap) -> io.NodeOutput:
        return io.NodeOutput({"samples": _encode(vae, pixels, tile_size, overlap)})


class NewBieHiresFix(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="NewBieHiresFix",
            display_name="NewBie Hires Fix",
            category="NewBie/sampling",
            search_aliases=["newbie", "hires", "upscale", "second pass", "highres fix"],
            description="The second pass in one node: upscales a first result (as pixels through the VAE, or as a "
            "latent), then re-samples it at low strength on the official grid with the time shift raised for the "
            "larger token count (shift x sqrt(token ratio)).",
            inputs=[
                io.Model.Input("model", tooltip="The NewBie MODEL of the first pass."),
                io.Conditioning.Input("positive", tooltip="Prompt conditioning (the first pass's)."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning (the first pass's)."),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=True,
                    tooltip="Noise seed of the second pass.",
                ),
                io.Int.Input("steps", default=12, min=1, max=1000, tooltip="Steps the second pass runs."),
                io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip="Guidance scale."),
                io.Float.Input("cfg_trunc", default=0.25, min=0.0, max=1.0, step=0.01, tooltip=CFG_TRUNC_TIP),
                io.Float.Input("renorm", default=0.0, min=0.0, max=10.0, step=0.05, tooltip=RENORM_TIP),
                io.Combo.Input(
                    "sampler_name",
                    options=sampler_names(),
                    default="newbie_midpoint",
                    tooltip="newbie_midpoint / newbie_euler are the official solvers; the rest are ComfyUI's.",
                ),
                io.Float.Input(
                    "scale",
                    default=2.0,
                    min=1.0,
                    max=img2img.MAX_HIRES_SCALE,
                    step=0.05,
                    tooltip="Size factor per side (rounded to multiples of 16).",
                ),
                io.Float.Input(
                    "strength",
                    default=img2img.HIRES_STRENGTH,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Fraction of the schedule the second pass runs, like denoise (0 = only upscale).",
                ),
                io.Combo.Input(
                    "upscale_method",
                    options=UPSCALE_METHODS,
                    default="pixel",
                    tooltip="pixel: decode, upscale the image, encode (sharper; needs the VAE). latent: upscale "
                    "the latent directly (faster).",
                ),
                io.Latent.Input("samples", optional=True, tooltip="The first pass's latent (or give an image)."),
                io.Image.Input("image", optional=True, tooltip="An image to upscale instead of a latent."),
                io.Vae.Input("vae", optional=True, tooltip="The FLUX VAE; needed for pixel upscaling and image input."),
            ],
            outputs=[io.Latent.Output(tooltip="The second pass's latent at the new size.")],
        )

    @classmethod
    def execute(
        cls,
        model,
        positive,
        negative,
        seed,
        steps,
        cfg,
        cfg_trunc,
        renorm,
        sampler_name,
        scale,
        strength,
        upscale_method,
        samples=None,
        image=None,
        vae=None,
    ) -> io.NodeOutput:
        latent = cls._upscaled(samples, image, vae, scale, upscale_method)
        h, w = latent.shape[-2] * 8, latent.shape[-1] * 8
        base_w, base_h = cls._base_size(samples, image)
        shift = img2img.hires_shift(cls._model_shift(model), base_w, base_h, w, h)
        solver = NEWBIE_SAMPLERS.get(sampler_name, "midpoint")  # stock samplers: the official default grid
        sigmas = (1.0 - img2img.strength_times(steps, strength, shift, solver)).to(torch.float32)
        out = dict(samples or {})
        out.pop("noise_mask", None)  # the mask was for the first pass's size
        if len(sigmas) < 2:
            out["samples"] = latent
            return io.NodeOutput(out)
        guided = with_official_guidance(model, cfg_trunc, renorm)
        out["samples"] = sample_on_sigmas(
            guided, latent, sigmas, seed, cfg, sampler_name, positive, negative, batch_index=out.get("batch_index")
        )
        return io.NodeOutput(out)

    @staticmethod
    def _model_shift(model) -> float:
        return float(getattr(model.get_model_object("model_sampling"), "shift", 6.0))

    @staticmethod
    def _base_size(samples, image) -> tuple[int, int]:
        if samples is not None:
            s = samples["samples"]
            return s.shape[-1] * 8, s.shape[-2] * 8
        return image.shape[2], image.shape[1]

    @staticmethod
    def _upscaled(samples, image, vae, scale, method) -> torch.Tensor:
        if samples is None and image is None:
            raise ValueError("NewBie Hires Fix: connect the first pass's latent (samples) or an image")
        if samples is not None and image is not None:
            raise ValueError("NewBie Hires Fix: connect either samples or image, not both")
        needs_vae = image is not None or method == "pixel"
        if needs_vae and vae is None:
            what = "an image input" if image is not None else "pixel upscaling"
            raise ValueError(f"NewBie Hires Fix: {what} needs the VAE; connect it (or choose upscale_method latent)")
        base_w, base_h = NewBieHiresFix._base_size(samples, image)
        w, h = img2img.hires_size(base_w, base_h, scale)
        if method == "latent":
            z = samples["samples"] if samples is not None else _encode(vae, image, 512, 64)
            return img2img.upscale_latents(z, w, h).to(z.dtype)
        pixels = image if image is not None else vae.decode(samples["samples"])
        if pixels.ndim == 5:
            pixels = pixels.reshape(-1, *pixels.shape[-3:])
        big = img2img.upscale_pixels(pixels[..., :3].movedim(-1, 1), w, h).movedim(1, -1)
        return _encode(vae, big, 512, 64)


RUN_OUTPUTS = [
    ("prompt", io.String, "The prompt (XML, tags or text) exactly as it was given."),
    ("negative", io.String, "The negative prompt."),
    ("seed", io.Int, "Noise seed."),
    ("steps", io.Int, "Sampling steps."),
    ("cfg", io.Float, "Guidance scale."),
    ("cfg_trunc", io.Float, "Official CFG truncation."),
    ("renorm", io.Float, "Official CFG renormalisation."),
    ("width", io.Int, "Width of the first pass in pixels."),
    ("height", io.Int, "Height of the first pass in pixels."),
]


class NewBieLoadRunFromImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        import folder_paths

        input_dir = folder_paths.get_input_directory()
        files = sorted(f for f in os.listdir(input_dir) if os.path.isfile(os.path.join(input_dir, f)))
        return schema(
            node_id="NewBieLoadRunFromImage",
            display_name="NewBie Load Run From Image",
            category="NewBie/prompt",
            search_aliases=["newbie", "png info", "metadata", "load prompt", "reproduce"],
            description="Reads the run a picture was made with: PNGs written by python -m newbie_core, and ComfyUI "
            "PNGs whose workflow used NewBie Sampler. Returns the prompt, negative prompt, seed, steps, CFG and size.",
            inputs=[
                io.Combo.Input(
                    "image",
                    options=files,
                    upload=io.UploadType.image,
                    tooltip="A PNG in ComfyUI's input folder (upload one here).",
                ),
            ],
            outputs=[kind.Output(id=name, display_name=name, tooltip=tip) for name, kind, tip in RUN_OUTPUTS],
        )

    @classmethod
    def _path(cls, image: str) -> str:
        import folder_paths

        return folder_paths.get_annotated_filepath(image)

    @classmethod
    def validate_inputs(cls, image) -> bool | str:
        import folder_paths

        if not folder_paths.exists_annotated_filepath(image):
            return f"NewBie Load Run From Image: {image} is not in the input folder"
        return True

    @classmethod
    def fingerprint_inputs(cls, image):
        with open(cls._path(image), "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()

    @classmethod
    def execute(cls, image) -> io.NodeOutput:
        try:
            run = png_runs.read_run(cls._path(image))
        except ConfigError as exc:
            raise ValueError(f"NewBie Load Run From Image: {exc}") from None
        return io.NodeOutput(
            *(getattr(run, name if name != "negative" else "negative_prompt") for name, *_ in RUN_OUTPUTS)
        )


NODES = [NewBieVAEEncode, NewBieHiresFix, NewBieLoadRunFromImage]
