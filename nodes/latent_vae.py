"""Empty latent at NewBie's training resolutions, and a VAE decode that falls back to tiles."""

from __future__ import annotations

import logging

import comfy.model_management as mm
import torch

from ..newbie_core.defaults import OFFICIAL, SIZE_MULTIPLE
from ._api import io, schema

log = logging.getLogger("newbie")

#: Training buckets near 1024x1024 (multiples of 64, area <= 1024^2): width x height.
RESOLUTIONS = [
    "1024x1024 (1:1)",
    "896x1152 (7:9)",
    "832x1216 (2:3)",
    "768x1344 (4:7)",
    "704x1472 (11:23)",
    "640x1536 (5:12)",
    "1152x896 (9:7)",
    "1216x832 (3:2)",
    "1344x768 (7:4)",
    "1472x704 (23:11)",
    "1536x640 (12:5)",
    "custom",
]


class NewBieEmptyLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="NewBieEmptyLatent",
            display_name="NewBie Empty Latent",
            category="NewBie/latent",
            search_aliases=["newbie", "empty latent", "resolution"],
            description="An empty 16-channel latent at one of NewBie's training resolutions (about one megapixel), or a "
            "custom size in multiples of 16.",
            inputs=[
                io.Combo.Input(
                    "resolution",
                    options=RESOLUTIONS,
                    default=RESOLUTIONS[0],
                    tooltip="Width x height the model was trained on; 'custom' uses the fields below.",
                ),
                io.Int.Input(
                    "width",
                    default=OFFICIAL.width,
                    min=16,
                    max=8192,
                    step=SIZE_MULTIPLE,
                    tooltip="Used when resolution is custom.",
                ),
                io.Int.Input(
                    "height",
                    default=OFFICIAL.height,
                    min=16,
                    max=8192,
                    step=SIZE_MULTIPLE,
                    tooltip="Used when resolution is custom.",
                ),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Images per run."),
            ],
            outputs=[io.Latent.Output(tooltip="Zeros of shape [batch, 16, height/8, width/8].")],
        )

    @classmethod
    def validate_inputs(cls, resolution, width, height, batch_size) -> bool | str:
        if resolution == "custom" and (width % 16 or height % 16):
            return f"NewBie Empty Latent: {width}x{height} is impossible; width and height must be multiples of 16"
        return True

    @classmethod
    def execute(cls, resolution, width, height, batch_size) -> io.NodeOutput:
        if resolution != "custom":
            width, height = (int(v) for v in resolution.split(" ")[0].split("x"))
        if width % 16 or height % 16:
            raise ValueError(
                f"NewBie Empty Latent: {width}x{height} is impossible; width and height must be multiples of 16"
            )
        samples = torch.zeros([batch_size, 16, height // 8, width // 8], device=mm.intermediate_device())
        return io.NodeOutput({"samples": samples})


def tile_inputs() -> list:
    """The tiled-fallback widgets shared by the NewBie VAE encode and decode nodes (same names, same defaults)."""
    return [
        io.Int.Input(
            "tile_size",
            default=512,
            min=128,
            max=4096,
            step=32,
            tooltip="Tile edge in pixels for the out-of-memory fallback.",
        ),
        io.Int.Input("overlap", default=64, min=0, max=1024, step=32, tooltip="Tile overlap in pixels (blended)."),
    ]


def _is_oom(exc: Exception) -> bool:
    is_oom = getattr(mm, "is_oom", None)  # newer cores also recognise accelerator OOM errors
    return (
        is_oom(exc) if is_oom is not None else isinstance(exc, mm.OOM_EXCEPTION) and "out of memory" in str(exc).lower()
    )


class NewBieVAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="NewBieVAEDecode",
            display_name="NewBie VAE Decode",
            category="NewBie/latent",
            search_aliases=["newbie", "vae decode", "tiled"],
            description="Decodes with a stock VAE (the FLUX ae.safetensors). If the whole image does not fit in memory, "
            "it decodes in overlapping tiles instead of failing.",
            inputs=[
                io.Latent.Input("samples", tooltip="The latent from the sampler."),
                io.Vae.Input("vae", tooltip="The FLUX.1 16-channel VAE (VAELoader with ae.safetensors)."),
                *tile_inputs(),
            ],
            outputs=[io.Image.Output(tooltip="Decoded images.")],
        )

    @classmethod
    def execute(cls, samples, vae, tile_size, overlap) -> io.NodeOutput:
        latent = samples["samples"]
        try:
            images = vae.decode(latent)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are handled, the rest re-raised
            if not _is_oom(exc):
                raise
            log.warning("NewBie VAE Decode: out of memory, decoding in %dpx tiles", tile_size)
            mm.soft_empty_cache()
            scale = 8
            images = vae.decode_tiled(
                latent,
                tile_x=tile_size // scale,
                tile_y=tile_size // scale,
                overlap=min(overlap // scale, tile_size // scale // 4),
            )
        if images.ndim == 5:
            images = images.reshape(-1, *images.shape[-3:])
        return io.NodeOutput(images)


NODES = [NewBieEmptyLatent, NewBieVAEDecode]
