"""The NewBie Next-DiT diffusion transformer."""

from .attention import sdpa_attention
from .checkpoint import load_transformer, open_transformer_checkpoint
from .config import NEWBIE_EXP01, NextDiTConfig, tiny_config
from .model import NextDiT

__all__ = [
    "NEWBIE_EXP01",
    "NextDiT",
    "NextDiTConfig",
    "load_transformer",
    "open_transformer_checkpoint",
    "sdpa_attention",
    "tiny_config",
]
