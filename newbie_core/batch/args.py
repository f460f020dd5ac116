"""Flags of ``python -m newbie_core batch`` (besides generate's model and sampling flags)."""

from __future__ import annotations

import argparse

from .prompts import FORMATS


def add_batch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "prompts", metavar="PROMPTS", help="prompt list: .jsonl (one object per line), .txt (one prompt per line), .csv"
    )
    p.add_argument("--out", required=True, help="output folder: <id>.png per item and manifest.jsonl (resumable)")
    p.add_argument("--batch-size", type=int, default=1, help="items of the same size and settings per forward")
    p.add_argument("--format", choices=FORMATS, default="auto", help="prompt list format (default: from the ending)")
