"""Loader node for the NewBie Next-DiT (returns a stock MODEL)."""

from __future__ import annotations

import folder_paths

from ..newbie_core.errors import NewBieError
from ._api import io, schema
from .comfy_model import WEIGHT_DTYPES, load_newbie_diffusion_model


def diffusion_model_choices() -> list[str]:
    """Files in ``models/diffusion_models`` with NewBie ones first (the folder is shared with other models)."""
    names = folder_paths.get_filename_list("diffusion_models")
    return sorted(names, key=lambda n: ("newbie" not in n.lower(), n.lower()))


class NewBieDiTLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="NewBieDiTLoader",
            display_name="Load NewBie Diffusion Model",
            category="NewBie/loaders",
            search_aliases=["newbie", "lumina", "nextdit", "unet loader"],
            description=(
                "Loads NewBie-image-Exp0.1's Next-DiT with this pack's native implementation and returns a "
                "standard MODEL: use it with KSampler, LoRA loaders, ModelSamplingAuraFlow and other stock nodes."
            ),
            inputs=[
                io.Combo.Input(
                    "unet_name",
                    options=diffusion_model_choices(),
                    tooltip="The NewBie transformer file in models/diffusion_models "
                    "(e.g. NewBie-image-Exp0.1.safetensors, the HF transformer/diffusion_pytorch_model.safetensors).",
                ),
                io.Combo.Input(
                    "weight_dtype",
                    options=WEIGHT_DTYPES,
                    default="default",
                    tooltip="Storage dtype of the weights. default: ComfyUI picks for your GPU (bf16 where supported). "
                    "fp8 halves memory; fp8_e4m3fn_fast also computes in fp8 on GPUs that support it.",
                ),
                io.Boolean.Input(
                    "compile",
                    default=False,
                    optional=True,
                    tooltip="torch.compile the repeated transformer block once (the first image pays the compile; "
                    "later ones run faster). Uses PyTorch SDPA attention while compiled.",
                ),
            ],
            outputs=[io.Model.Output(tooltip="The diffusion model, ready for any stock sampler.")],
        )

    @classmethod
    def execute(cls, unet_name: str, weight_dtype: str, compile: bool = False) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise("diffusion_models", unet_name)
        try:
            patcher = load_newbie_diffusion_model(path, weight_dtype, compile_block=bool(compile))
        except NewBieError as exc:
            raise ValueError(f"NewBie loader: {exc}") from None
        return io.NodeOutput(patcher)


NODES = [NewBieDiTLoader]
