"""ComfyUI glue: node classes and the extension that registers them. No model maths here."""

from __future__ import annotations

from ._api import ComfyExtension, io


def all_nodes() -> list[type[io.ComfyNode]]:
    from . import encoders, img2img, latent_vae, loaders, lora, prompt, regions, sampling, writer

    return [
        *loaders.NODES,
        *lora.NODES,
        *encoders.NODES,
        *prompt.NODES,
        *sampling.NODES,
        *latent_vae.NODES,
        *img2img.NODES,
        *writer.NODES,
        *regions.NODES,
    ]


class NewBieExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return all_nodes()
