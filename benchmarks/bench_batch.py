"""Images per minute of ``pipeline.generate(items=...)`` (one forward per step over the batch) by batch size.

    python benchmarks/bench_batch.py [--size 256] [--steps 4] [--device cpu]

Runs the embedded tiny model (or any NewBiePipeline you adapt this to) on distinct prompts and
seeds, so the numbers show what batching buys over one image at a time. Prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from newbie_core.pipeline import GenerationSettings, NewBiePipeline  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--images", type=int, default=8, help="images per measurement")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    pipe = NewBiePipeline.tiny(device=args.device)
    items = [
        GenerationSettings(
            prompt=f"prompt number {i}, 1girl", seed=i, width=args.size, height=args.size, steps=args.steps
        )
        for i in range(args.images)
    ]
    pipe.generate(items[0], items=items[:1])  # warm-up
    print(f"tiny model, {args.size}x{args.size}, {args.steps} steps, {args.images} images, {args.device}")
    print(f"{'batch size':>10} | {'seconds':>8} | {'images/min':>10} | {'speed-up':>8}")
    base = None
    for bs in (1, 2, 4, 8):
        if bs > args.images:
            break
        t0 = time.perf_counter()
        for i in range(0, args.images, bs):
            pipe.generate(items[i], items=items[i : i + bs])
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        base = base or seconds
        print(f"{bs:>10} | {seconds:>8.2f} | {60 * args.images / seconds:>10.1f} | {base / seconds:>7.2f}x")


if __name__ == "__main__":
    main()
