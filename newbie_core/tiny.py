"""The embedded smoke-test model: every component at toy size with seeded random weights.

It exists so a fresh machine can run the whole pipeline in seconds without downloading
anything. It is NOT NewBie: its pictures are structured noise. Every output made with it is
labelled as such.
"""

from __future__ import annotations

import torch

from .dit import NextDiT
from .dit.config import NextDiTConfig, official_ffn_hidden
from .text import TextEncoders
from .text.gemma import GemmaTextEncoder
from .text.jina import JinaTextConfig, JinaTextModel
from .text.tokenizers import ByteTokenizer
from .vae import AutoEncoder, VAEConfig

LABEL = "embedded tiny smoke-test model (random weights, not NewBie)"
SEED = 20251201

GEMMA_HIDDEN = 64
JINA_HIDDEN = 64


def _seeded_init(module: torch.nn.Module, seed: int, scale: float = 0.5) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 and ("norm" in name or "ln" in name):
                p.copy_(1.0 + 0.05 * torch.randn(p.shape, generator=gen) if "bias" not in name else torch.zeros_like(p))
            else:
                fan_in = p[0].numel() if p.ndim > 1 else p.numel()
                p.copy_(torch.randn(p.shape, generator=gen) * (scale / max(fan_in, 1) ** 0.5))


def tiny_dit_config() -> NextDiTConfig:
    return NextDiTConfig(
        dim=64,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=4,
        n_kv_heads=2,
        ffn_hidden_dim=official_ffn_hidden(64, 32),
        cap_feat_dim=GEMMA_HIDDEN,
        axes_dims=(4, 6, 6),
        clip_text_dim=JINA_HIDDEN,
    )


def tiny_transformer() -> NextDiT:
    model = NextDiT(tiny_dit_config())
    _seeded_init(model, SEED)
    return model.eval().requires_grad_(False)


def tiny_text_encoders() -> TextEncoders:
    from transformers import Gemma3TextConfig

    cfg = Gemma3TextConfig(
        vocab_size=260,
        hidden_size=GEMMA_HIDDEN,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        query_pre_attn_scalar=32,
        sliding_window=1024,
        max_position_embeddings=1024,
    )
    cfg._attn_implementation = "sdpa"
    gemma = GemmaTextEncoder(cfg)
    _seeded_init(gemma, SEED + 1)
    jina = JinaTextModel(
        JinaTextConfig(vocab_size=260, hidden_size=JINA_HIDDEN, num_layers=1, num_heads=1, intermediate_size=128)
    )
    _seeded_init(jina, SEED + 2)
    return TextEncoders(
        gemma.eval().requires_grad_(False),
        ByteTokenizer(bos_id=2, eos_id=1, pad_id=0, offset=4, add_bos=True, add_eos=False),
        jina.eval().requires_grad_(False),
        ByteTokenizer(bos_id=0, eos_id=2, pad_id=1, offset=4, add_bos=True, add_eos=True),
    )


def tiny_vae() -> AutoEncoder:
    vae = AutoEncoder(VAEConfig(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1))
    _seeded_init(vae, SEED + 3, scale=1.0)
    return vae.eval().requires_grad_(False)
