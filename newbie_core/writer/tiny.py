"""The writer on the embedded tiny smoke-test Gemma: seeded random top layer and norm, no files.

Its words are noise; the structure is still always valid NewBie XML, which is what it is for.
"""

from __future__ import annotations

import zlib

import torch

from ..tiny import SEED, tiny_text_encoders
from .model import GemmaWriterLM, extend_encoder, full_config


def _seeded(name: str, shape) -> torch.Tensor:
    gen = torch.Generator().manual_seed(SEED + 4 + zlib.crc32(name.encode()))
    if len(shape) == 1 and "norm" in name:
        return 1.0 + 0.05 * torch.randn(shape, generator=gen)
    fan_in = shape[-1] if len(shape) > 1 else shape[0]
    return torch.randn(shape, generator=gen) * (0.5 / max(fan_in, 1) ** 0.5)


def tiny_writer(encoders=None) -> tuple[GemmaWriterLM, object]:
    """(writer LM, Gemma tokenizer) on the tiny encoders (built here when not given)."""
    encoders = encoders or tiny_text_encoders()
    gemma = encoders.gemma
    shapes = {}

    def read(name: str) -> torch.Tensor:
        return _seeded(name, shapes[name])

    from transformers import Gemma3TextModel

    with torch.device("meta"):
        probe = Gemma3TextModel(full_config(gemma.config))
    shapes.update({k: tuple(v.shape) for k, v in probe.state_dict().items()})
    return extend_encoder(gemma, read), encoders.gemma_tokenizer
