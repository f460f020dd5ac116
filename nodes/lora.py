"""NewBie LoRA node: every NewBie LoRA format through newbie_core's loader, applied by ComfyUI's patcher.

The maths lives in ``newbie_core.lora`` (one loader for the pipeline, the CLI and this node); here each
patched weight gets a small ComfyUI weight adapter that calls ``TargetPatch.apply`` when ComfyUI patches
the weight, so only the LoRA's own tensors are held, never a full-size delta.
"""

from __future__ import annotations

import logging

import comfy.weight_adapter
import folder_paths
import torch

from ..newbie_core.errors import NewBieError
from ..newbie_core.lora import plan_lora, read_lora
from ._api import io, schema

log = logging.getLogger("newbie")

PREFIX = "diffusion_model."

STRENGTH_TOOLTIP = (
    "1.0 applies the LoRA as it was trained: the trainer's alpha/r scale (official NewBie trainer: r 8, alpha 4, "
    "so 0.5 x B·A), read from adapter_config.json or the file. The official NewBie LoRA node applies PEFT files "
    "without alpha/r, so its 1.0 equals r/alpha here (2.0 for the trainer's defaults)."
)


class NewBieWeightAdapter(comfy.weight_adapter.WeightAdapterBase):
    """ComfyUI adapter around one ``TargetPatch``; ``weights`` = (structure, tensors) as ComfyUI's prefetch expects."""

    name = "newbie_lora"

    def __init__(self, loaded_keys, weights):
        self.loaded_keys = loaded_keys
        self.weights = weights
        structure, tensors = weights
        self.patch = structure.with_tensors(tensors)

    @classmethod
    def from_patch(cls, patch, loaded_keys) -> NewBieWeightAdapter:
        return cls(set(loaded_keys), (patch.with_tensors([]), tuple(patch.tensors)))

    def calculate_weight(
        self,
        weight,
        key,
        strength,
        strength_model,
        offset,
        function,
        intermediate_dtype=torch.float32,
        original_weight=None,
    ):
        new = self.patch.apply(weight, strength)
        weight += function((new - weight.float()).to(weight.dtype))
        return weight


def model_targets(model_patcher) -> dict[str, tuple]:
    """The DiT's parameter names (without ComfyUI's ``diffusion_model.``) and shapes."""
    return {
        k[len(PREFIX) :]: tuple(v.shape) for k, v in model_patcher.model.state_dict().items() if k.startswith(PREFIX)
    }


class NewBieLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="NewBieLoRA",
            display_name="NewBie LoRA",
            category="NewBie/loaders",
            search_aliases=["newbie", "lora", "peft", "lokr", "loha", "dora"],
            description="Applies a LoRA to a NewBie MODEL: the official trainer's PEFT (adapter_config.json, rsLoRA, "
            "DoRA) and LyCORIS LoKr files, LoHa, full diffs, kohya, diffusion-pipe and diffusers-named Lumina2 LoRAs, "
            "each with its own scale rule. Every module of the file is applied or listed in the report.",
            inputs=[
                io.Model.Input("model", tooltip="The NewBie MODEL to patch."),
                io.Combo.Input(
                    "lora_name",
                    options=folder_paths.get_filename_list("loras"),
                    tooltip="LoRA file in models/loras (adapter_config.json beside it is read if present).",
                ),
                io.Float.Input("strength", default=1.0, min=-4.0, max=4.0, step=0.01, tooltip=STRENGTH_TOOLTIP),
                io.String.Input(
                    "block_strengths",
                    default="",
                    optional=True,
                    tooltip="Optional strength per block group, multiplied with strength: e.g. "
                    "'refiners=0.5, layers.0-11=0.8, final=0'. Groups: refiners, noise_refiner, context_refiner, "
                    "layers, layers.N, layers.A-B, embedders, final. Empty: 1 everywhere.",
                ),
            ],
            outputs=[
                io.Model.Output(tooltip="The patched model (the input is left untouched)."),
                io.String.Output(
                    "report", tooltip="What was applied, and every module that matched nothing or only partly."
                ),
                io.String.Output(
                    "trigger_words",
                    tooltip="Trigger words from the file's metadata (modelspec.trigger_phrase, kohya tag frequency); "
                    "XML fragments are kept as written, for the XML prompt nodes.",
                ),
            ],
        )

    @classmethod
    def execute(cls, model, lora_name: str, strength: float, block_strengths: str = "") -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise("loras", lora_name)
        try:
            plan = plan_lora(read_lora(path), model_targets(model), block_strengths or None)
        except NewBieError as exc:
            raise ValueError(f"NewBie LoRA: {exc}") from None
        report = plan.report.summary()
        if not plan.patches:
            raise ValueError(f"NewBie LoRA: {lora_name} has no module that matches this model\n{report}")
        log.log(logging.INFO if plan.report.complete else logging.WARNING, "NewBie LoRA %s", report)
        if strength == 0:
            return io.NodeOutput(model, f"strength 0: not applied\n{report}", plan.trigger_words)
        patches = {
            PREFIX + target: NewBieWeightAdapter.from_patch(patch, {part.source for part in patch.parts})
            for target, patch in plan.patches.items()
        }
        patched = model.clone()
        patched.add_patches(patches, strength)
        return io.NodeOutput(patched, report, plan.trigger_words)


NODES = [NewBieLoRA]
