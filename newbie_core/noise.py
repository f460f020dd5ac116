"""Seeded starting noise with no two seeds alike.

torch's CPU generator (mt19937) uses only the low 32 bits of its seed, so seeds 5 and 2^32 + 5 would give
the same picture. Seeds below 2^32 use it unchanged (the same noise as the official demo and ComfyUI);
seeds from 2^32 to 2^64 - 1 use numpy's PCG64 seeded with the whole value, so every seed in [0, 2^64)
has its own noise. In both cases sample i of a batch equals sample i of any larger batch.
"""

from __future__ import annotations

import torch

from .defaults import SEED_LIMIT
from .errors import ConfigError

TORCH_SEED_LIMIT = 2**32


def seeded_normal(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Standard normal float32 noise of ``shape`` (on the CPU) for ``seed`` in [0, 2^64)."""
    seed = int(seed)
    if not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"seed must be from 0 to 2^64-1, got {seed}")
    if seed < TORCH_SEED_LIMIT:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        return torch.randn(shape, generator=gen, dtype=torch.float32)
    import numpy as np

    rng = np.random.Generator(np.random.PCG64(seed))
    return torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))
