"""Tiny Gemma3 / Jina CLIP text encoders and tokenizers built in-test (no downloads)."""

from __future__ import annotations

import io

import torch
from safetensors.torch import save_file

from newbie_core.text.jina import JinaTextConfig, JinaTextModel

CORPUS = [
    "1girl, solo, long_hair, blue_eyes, smile, school_uniform",
    "<character_1><n>rem</n><gender>1girl</gender></character_1>",
    "You are an assistant designed to generate high-quality anime images based on xml format prompts. <Prompt Start>",
    "a quiet street at night, rain, neon lights, reflections",
    "<general_tags><count>2girls</count><style>anime_style</style></general_tags>",
] * 20


def train_spm(bos: int, eos: int, pad: int, unk: int, vocab_size: int = 360) -> bytes:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        bos_id=bos,
        eos_id=eos,
        pad_id=pad,
        unk_id=unk,
        character_coverage=1.0,
        byte_fallback=True,
        num_threads=1,
        minloglevel=2,
    )
    return buf.getvalue()


def gemma_spm() -> bytes:
    return train_spm(bos=2, eos=1, pad=0, unk=3)


def jina_spm() -> bytes:
    return train_spm(bos=0, eos=2, pad=1, unk=3)


def tiny_gemma_config(vocab: int, layers: int = 4):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=1024,
        rms_norm_eps=1e-6,
        rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0,
        rope_scaling={"rope_type": "linear", "factor": 8.0},
        max_position_embeddings=4096,
    )


def tiny_gemma(vocab: int, seed: int = 0, layers: int = 4):
    """A full (all layers, final norm) transformers Gemma3 text model with random weights: the reference."""
    from transformers import Gemma3TextModel

    torch.manual_seed(seed)
    cfg = tiny_gemma_config(vocab, layers)
    cfg._attn_implementation = "eager"
    model = Gemma3TextModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    return model


def save_comfy_text_encoder(model, path, spm_blob: bytes | None):
    """ComfyUI's repackaged layout: keys under ``model.``, the sentencepiece model under ``spiece_model``."""
    sd = {"model." + k: v.contiguous() for k, v in model.state_dict().items()}
    if spm_blob is not None:
        sd["spiece_model"] = torch.frombuffer(bytearray(spm_blob), dtype=torch.uint8)
    save_file(sd, str(path))
    return path


save_gemma_comfy = save_jina_comfy = save_comfy_text_encoder


def tiny_jina(vocab: int, seed: int = 0) -> JinaTextModel:
    gen = torch.Generator().manual_seed(seed)
    model = JinaTextModel(
        JinaTextConfig(vocab_size=vocab, hidden_size=128, num_layers=2, num_heads=2, intermediate_size=96)
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.1 if "norm" in name or "emb_ln" in name else 0.3
            base = 1.0 if name.endswith("weight") and ("norm" in name or "emb_ln" in name) else 0.0
            p.copy_(base + scale * torch.randn(p.shape, generator=gen))
    return model.eval().requires_grad_(False)
