"""Tiny weight files in the layouts users have, for host tests."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from dit_helpers import save_checkpoint, tiny_model  # noqa: E402
from text_helpers import gemma_spm, jina_spm, save_gemma_comfy, save_jina_comfy, tiny_gemma, tiny_jina  # noqa: E402

from newbie_core.vae import AutoEncoder, VAEConfig  # noqa: E402

#: ComfyUI's stock VAE loader fixes ch_mult (1, 2, 4, 4) and 2 res blocks for 16-channel VAEs, but reads the
#: decoder width from the file: a 32-wide decoder-only FLUX VAE is the smallest it accepts.
TINY_FLUX_VAE = VAEConfig(ch=32, ch_mult=(1, 2, 4, 4), num_res_blocks=2)


def write_tiny_models(models: Path) -> dict:
    """DiT (cap 64 / pooled 128 to match the tiny encoders), Gemma, Jina, FLUX-shaped VAE and a LoRA."""
    (models / "diffusion_models").mkdir(parents=True, exist_ok=True)
    for key in ("text_encoders", "vae", "loras"):
        (models / key).mkdir(parents=True, exist_ok=True)
    dit = tiny_model(seed=41, cap_feat_dim=64, clip_text_dim=128)
    save_checkpoint(dit, models / "diffusion_models" / "NewBie-tiny.safetensors")
    gemma = tiny_gemma(vocab=360, seed=42)
    save_gemma_comfy(gemma, models / "text_encoders" / "gemma_tiny.safetensors", gemma_spm())
    jina = tiny_jina(vocab=360, seed=43)
    save_jina_comfy(jina, models / "text_encoders" / "jina_tiny.safetensors", jina_spm())
    vae = AutoEncoder(TINY_FLUX_VAE)
    gen = torch.Generator().manual_seed(44)
    sd = {}
    for k, v in vae.state_dict().items():
        if k.startswith("decoder."):
            fan = v[0].numel() if v.ndim > 1 else 1
            sd[k] = (1 + 0.05 * torch.randn(v.shape, generator=gen)) if "norm" in k and k.endswith("weight") else (
                torch.randn(v.shape, generator=gen) / fan**0.5)
    save_file(sd, str(models / "vae" / "ae_tiny.safetensors"))
    w = dit.layers[0].attention.qkv.weight
    lora = {"diffusion_model.layers.0.attention.qkv.lora_up.weight": torch.randn(w.shape[0], 2, generator=gen) * 0.1,
            "diffusion_model.layers.0.attention.qkv.lora_down.weight": torch.randn(2, w.shape[1], generator=gen) * 0.1}
    save_file(lora, str(models / "loras" / "newbie_tiny_lora.safetensors"))
    return {"dit": dit, "gemma": gemma, "jina": jina}
