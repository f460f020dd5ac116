"""The official NewBie recipe and the ranges each knob accepts: the one place CLI help, settings and nodes read.

The recipe is the official demo's: 18 grid points with the midpoint solver (``steps=17`` intervals,
34 model calls), CFG 5 applied while t < 0.25, no renormalisation, time shift 6, 1024x1024.
The embedded tiny smoke-test model (``newbie_core.tiny``) defaults to 64x64 instead: it is a toy,
and at 1024x1024 even a toy takes a while on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    steps: int = 17
    cfg: float = 5.0
    cfg_trunc: float = 0.25
    renorm: float = 0.0
    shift: float = 6.0
    solver: str = "midpoint"
    width: int = 1024
    height: int = 1024
    seed: int = 0


OFFICIAL = Recipe()

#: Default image side of the embedded tiny model (``generate`` without ``--models-dir``).
TINY_SIZE = 64


@dataclass(frozen=True)
class Range:
    """Closed interval ``[lo, hi]`` a number must lie in (nodes use it for widget min/max too)."""

    lo: float
    hi: float


RANGES = {
    "steps": Range(1, 1000),
    "cfg": Range(0.0, 100.0),
    "cfg_trunc": Range(0.0, 1.0),
    "renorm": Range(0.0, 10.0),
    "shift": Range(0.01, 100.0),
    "strength": Range(0.0, 1.0),
    "step_cache": Range(0.0, 1.0),
}

#: Image sides are multiples of this (VAE factor 8 x DiT patch 2).
SIZE_MULTIPLE = 16
#: Largest side accepted without ``allow_large``; 4x the training resolution already leaves what NewBie learned.
MAX_SIDE = 4096
#: Largest side accepted with ``allow_large`` (tiled VAE decode keeps memory bounded; the DiT does not).
MAX_SIDE_LARGE = 16384
#: Seeds are unsigned 64-bit numbers, as ComfyUI's seed widget.
SEED_LIMIT = 2**64
