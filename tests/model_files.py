"""Tiny weight files in the layouts users have, for host tests."""

from __future__ import annotations

from pathlib import Path

import torch
from dit_helpers import save_checkpoint, tiny_model
from safetensors.torch import save_file
from text_helpers import gemma_spm, jina_spm, save_gemma_comfy, save_jina_comfy, tiny_gemma, tiny_jina

from newbie_core.vae import AutoEncoder, VAEConfig


def stock_vae_width() -> int:
    """Narrowest FLUX-layout decoder the host's stock VAE loader accepts.

    ComfyUI fixes ch_mult (1, 2, 4, 4) and 2 res blocks for 16-channel VAEs; cores since early 2026 read the
    decoder width from the file (32 works), older ones need the real width 128.
    """
    import comfy.sd

    sd = {k: v for k, v in AutoEncoder(VAEConfig(ch=32)).state_dict().items() if k.startswith("decoder.")}
    try:
        comfy.sd.VAE(sd=sd)
        return 32
    except RuntimeError:
        return 128


def write_tiny_models(models: Path, vae_width: int = 32, vae_encoder: bool = False) -> dict:
    """DiT (cap 64 / pooled 128 to match the tiny encoders), Gemma, Jina, FLUX-shaped VAE and a LoRA.

    ``vae_encoder`` adds the encoder for image to image, at the real width 128 (ComfyUI builds the FLUX encoder
    at that width whatever the decoder's).
    """
    (models / "diffusion_models").mkdir(parents=True, exist_ok=True)
    for key in ("text_encoders", "vae", "loras"):
        (models / key).mkdir(parents=True, exist_ok=True)
    dit = tiny_model(seed=41, cap_feat_dim=64, clip_text_dim=128)
    save_checkpoint(dit, models / "diffusion_models" / "NewBie-tiny.safetensors")
    gemma = tiny_gemma(vocab=360, seed=42)
    save_gemma_comfy(gemma, models / "text_encoders" / "gemma_tiny.safetensors", gemma_spm())
    jina = tiny_jina(vocab=360, seed=43)
    save_jina_comfy(jina, models / "text_encoders" / "jina_tiny.safetensors", jina_spm())
    vae = AutoEncoder(VAEConfig(ch=vae_width, ch_mult=(1, 2, 4, 4), num_res_blocks=2))
    gen = torch.Generator().manual_seed(44)
    sd = {}
    for k, v in vae.state_dict().items():
        if k.startswith("decoder."):
            fan = v[0].numel() if v.ndim > 1 else 1
            sd[k] = (
                (1 + 0.05 * torch.randn(v.shape, generator=gen))
                if "norm" in k and k.endswith("weight")
                else (torch.randn(v.shape, generator=gen) / fan**0.5)
            ).to(torch.bfloat16 if vae_width > 32 else torch.float32)
    if vae_encoder:
        encoder = AutoEncoder(VAEConfig(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2)).encoder
        for k, v in encoder.state_dict().items():
            fan = v[0].numel() if v.ndim > 1 else 1
            weight = "norm" in k and k.endswith("weight")
            sd["encoder." + k] = (
                (1 + 0.05 * torch.randn(v.shape, generator=gen))
                if weight
                else torch.randn(v.shape, generator=gen) / fan**0.5
            ).to(torch.bfloat16)
    save_file(sd, str(models / "vae" / "ae_tiny.safetensors"))
    w = dit.layers[0].attention.qkv.weight
    lora = {
        "diffusion_model.layers.0.attention.qkv.lora_up.weight": torch.randn(w.shape[0], 2, generator=gen) * 0.1,
        "diffusion_model.layers.0.attention.qkv.lora_down.weight": torch.randn(2, w.shape[1], generator=gen) * 0.1,
    }
    save_file(lora, str(models / "loras" / "newbie_tiny_lora.safetensors"))
    return {"dit": dit, "gemma": gemma, "jina": jina}
