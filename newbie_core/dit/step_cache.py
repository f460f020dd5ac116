"""Calibration-free step cache: the first main block's residual decides whether the others run.

Between sampling steps the main layers change the hidden state in a way that is tracked closely
by how much the *first* block's residual changes. When that relative change (mean absolute
difference over the mean absolute value, against the last fully computed call) is below
``threshold``, the remaining blocks are skipped and their cached residual is added instead.
``threshold = 0`` never skips, so it reproduces the uncached model bit for bit.
"""

from __future__ import annotations

import torch


def run_blocks(blocks, x, key_mask, freqs, c, attention, dtype):
    """The plain main-layer loop (the runner every other runner falls back on)."""
    for block in blocks:
        x = block(x, key_mask, freqs, c, attention, dtype)
    return x


class StepCache:
    """A ``NextDiT.layer_runner``; ``inner`` runs block sequences (e.g. a weight streamer)."""

    def __init__(self, threshold: float, inner=run_blocks):
        if threshold < 0:
            raise ValueError(f"step cache threshold must be >= 0, got {threshold}")
        self.threshold = float(threshold)
        self.inner = inner
        self.reset()

    def reset(self) -> None:
        self.computed = 0
        self.skipped = 0
        self._key = None
        self._first_residual = None
        self._rest_residual = None

    def __call__(self, blocks, x, key_mask, freqs, c, attention, dtype):
        first = self.inner(blocks[:1], x, key_mask, freqs, c, attention, dtype)
        residual = first - x
        # cond+uncond vs cond alone, another size or caption length: nothing to compare with
        key = (tuple(x.shape), x.dtype, x.device, None if key_mask is None else tuple(key_mask.shape))
        if self.threshold > 0 and key == self._key and self._relative_change(residual) < self.threshold:
            self.skipped += 1
            return first + self._rest_residual
        out = self.inner(blocks[1:], first, key_mask, freqs, c, attention, dtype)
        self.computed += 1
        self._key, self._first_residual, self._rest_residual = key, residual, out - first
        return out

    def _relative_change(self, residual: torch.Tensor) -> float:
        prev = self._first_residual
        return float((residual - prev).abs().mean() / prev.abs().mean().clamp_min(1e-12))
