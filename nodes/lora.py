"""LoRA loader for NewBie trainer (PEFT), kohya, LyCORIS and diffusers-named LoRAs, reporting what did not match."""

from __future__ import annotations

import logging

import comfy.lora
import comfy.utils
import folder_paths

from ..newbie_core.lora import MODULE_PREFIXES, lora_alpha_rank, lora_modules, with_alpha
from ._api import io, schema

log = logging.getLogger("newbie")


def newbie_key_map(model_patcher) -> dict:
    """Core's LoRA key map for the model plus every NewBie trainer prefix in front of each module name."""
    key_map = comfy.lora.model_lora_keys_unet(model_patcher.model, {})
    for key in model_patcher.model.state_dict():
        if key.startswith("diffusion_model.") and key.endswith(".weight"):
            module = key[len("diffusion_model.") : -len(".weight")]
            for prefix in MODULE_PREFIXES:
                key_map.setdefault(prefix + module, key)
    return key_map


class NewBieLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="NewBieLoRA",
            display_name="NewBie LoRA",
            category="NewBie/loaders",
            search_aliases=["newbie", "lora", "peft", "lokr"],
            description="Applies a LoRA to a NewBie MODEL. Besides the names stock loaders know, it maps the official "
            "NewBie LoRA trainer's PEFT keys (base_model.model.*) and reads alpha/rank from adapter_config.json or "
            "the file's metadata. Modules it cannot place are listed in the console instead of being ignored.",
            inputs=[
                io.Model.Input("model", tooltip="The NewBie MODEL to patch."),
                io.Combo.Input(
                    "lora_name",
                    options=folder_paths.get_filename_list("loras"),
                    tooltip="LoRA file in models/loras (adapter_config.json beside it is read if present).",
                ),
                io.Float.Input("strength", default=1.0, min=-4.0, max=4.0, step=0.01, tooltip="LoRA strength."),
            ],
            outputs=[io.Model.Output(tooltip="The patched model (the input is left untouched).")],
        )

    @classmethod
    def execute(cls, model, lora_name: str, strength: float) -> io.NodeOutput:
        if strength == 0:
            return io.NodeOutput(model)
        path = folder_paths.get_full_path_or_raise("loras", lora_name)
        state_dict, metadata = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
        alpha, rank = lora_alpha_rank(metadata, path)
        state_dict = with_alpha(state_dict, alpha)
        key_map = newbie_key_map(model)
        patches = comfy.lora.load_lora(state_dict, key_map, log_missing=False)
        unmatched = sorted(m for m in lora_modules(state_dict) if m not in key_map)
        if unmatched:
            log.warning(
                "NewBie LoRA %s: %d modules match nothing in this model: %s",
                lora_name,
                len(unmatched),
                ", ".join(unmatched[:10]) + (" ..." if len(unmatched) > 10 else ""),
            )
        if not patches:
            raise ValueError(f"NewBie LoRA: {lora_name} has no weights that match this model")
        log.info("NewBie LoRA %s: %d modules patched (alpha %s, rank %s)", lora_name, len(patches), alpha, rank)
        patched = model.clone()
        patched.add_patches(patches, strength)
        return io.NodeOutput(patched)


NODES = [NewBieLoRA]
