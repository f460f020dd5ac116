"""NewBie-image-Exp0.1 in plain PyTorch: DiT, text encoders, sampler, VAE, XML prompts, pipeline.

This package never imports ComfyUI. Heavy submodules load on first use, so ``import
newbie_core`` stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "NextDiT": ".dit",
    "NextDiTConfig": ".dit",
    "NEWBIE_EXP01": ".dit",
    "load_transformer": ".dit",
    "load_text_encoders": ".text",
    "TextEncoders": ".text",
    "load_vae": ".vae",
    "xml_prompt": ".xml_prompt",
    "NewBiePipeline": ".pipeline",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'newbie_core' has no attribute {name!r}")
    mod = importlib.import_module(module, __name__)
    return mod if module == "." + name else getattr(mod, name)
