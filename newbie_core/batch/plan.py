"""What runs where: per-item seeds, batches of compatible items, and the share of each rank.

Batches are cut from the whole list before it is split over ranks, so an item always shares its
batch with the same neighbours: its pixels are the same with 1 or N processes, and after a resume.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .prompts import PromptItem

SEED_BITS = 48  # exact in JavaScript numbers, so the seed can be typed into ComfyUI's widgets


@dataclass
class Job:
    index: int  # position in the list
    item: PromptItem
    settings: object  # GenerationSettings


def item_seed(base_seed: int, item_id: str) -> int:
    """Seed of an item that has none: a hash of ``--seed`` and the item's id only (not its position or rank)."""
    digest = hashlib.sha256(f"{int(base_seed)}:{item_id}".encode()).digest()
    return int.from_bytes(digest, "big") >> (256 - SEED_BITS)


def make_batches(jobs: list[Job], batch_size: int) -> list[list[Job]]:
    """Items whose settings may share a forward (same size, steps, CFG...), in list order, cut into ``batch_size``."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.settings.batch_key(), []).append(job)
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


def share(batches: list[list[Job]], rank: int, world: int) -> list[list[Job]]:
    """Round-robin over the batches that still have work: every batch goes to exactly one rank."""
    return batches[rank::world]
