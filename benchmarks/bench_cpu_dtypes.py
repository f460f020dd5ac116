"""CPU time per component in fp32 and bf16 (why bf16 weights decode their VAE in fp32 on a CPU).

Real-width FLUX VAE decoder (ch 128, random weights), the tiny DiT and text encoders, at one resolution:

    PYTHONPATH=$PWD python benchmarks/bench_cpu_dtypes.py --size 256 --repeat 3

Prints a table of the median seconds per call.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from newbie_core import tiny
from newbie_core.vae import AutoEncoder, VAEConfig


def median_time(fn, repeat: int) -> float:
    fn()  # warm-up (allocations, kernel selection)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    side = args.size // 8
    vae = AutoEncoder(VAEConfig()).eval()  # real widths (ch 128, mult 1-2-4-4)
    dit = tiny.tiny_transformer()
    encoders = tiny.tiny_text_encoders()
    latent = torch.randn(1, 16, side, side)
    caps = torch.randn(2, 32, tiny.GEMMA_HIDDEN)
    mask = torch.ones(2, 32, dtype=torch.bool)
    pooled = torch.randn(2, tiny.JINA_HIDDEN)
    gemma_rows, _ = encoders.gemma_ids(["1girl, smile", ""])
    jina_rows = encoders.jina_ids(["1girl, smile", ""])
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        vae.to(dtype)
        dit.to(dtype)
        encoders.gemma.to(dtype)
        encoders.jina.to(dtype)
        x = torch.cat([latent, latent]).to(dtype)
        t = torch.full((2,), 0.5, dtype=dtype)
        rows.append(
            (
                str(dtype).removeprefix("torch."),
                median_time(lambda: vae.decode_dit(latent), args.repeat),
                median_time(lambda x=x, t=t, d=dtype: dit(x, t, caps.to(d), mask, pooled.to(d)), args.repeat),
                median_time(lambda: encoders.encode_ids(gemma_rows, jina_rows), args.repeat),
            )
        )
    print(f"CPU, {args.threads} threads, {args.size}x{args.size}, median of {args.repeat} (seconds per call)")
    print(f"{'dtype':<10} {'VAE decode':>11} {'DiT call':>9} {'text enc':>9}")
    for name, v, d, e in rows:
        print(f"{name:<10} {v:>11.3f} {d:>9.4f} {e:>9.4f}")


if __name__ == "__main__":
    main()
