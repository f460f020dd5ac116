"""fp16 and bf16 against fp32 on the released Next-DiT shapes at 1024x1024: finite, and how far off.

    python benchmarks/bench_fp16_real_shape.py                 # full 3.5B config, 1024², 256 caption tokens
    python benchmarks/bench_fp16_real_shape.py --layers 4      # full width, fewer main layers (a CPU in minutes)

Seeded random weights in the real shapes (norms 1, others N(0, 0.5 / sqrt(fan_in))), one forward per dtype,
a CFG-sized batch of 2 by default. The weights are rebuilt from the seed for each dtype, so each cast starts from the same
float32 values and only one copy is in memory. The fp16 path is the pipeline's: fp16 matmuls, float32 residual
stream and norms, FFN product rescaled before ``w2``. Prints a table; on a CPU fp16 matmuls are slow (no native
fp16 kernels on most x86), so expect minutes there and seconds on a GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from newbie_core.dit import NEWBIE_EXP01, NextDiT  # noqa: E402


def build(cfg, device, dtype, seed: int = 0) -> NextDiT:
    with torch.device("meta"):
        model = NextDiT(cfg).to(dtype)
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.startswith("cap_embedder.0"):
                p.fill_(1.0)
            else:  # drawn in float32, then cast: every dtype rounds the same values
                values = torch.empty(p.shape, device=device).normal_(0.0, 0.5 / p.shape[-1] ** 0.5, generator=gen)
                p.copy_(values)
    return model.eval().requires_grad_(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=None, help="main layers (default: the released 36)")
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels")
    parser.add_argument("--caption", type=int, default=256, help="caption tokens")
    parser.add_argument("--batch", type=int, default=2, help="samples per forward (2: a CFG batch)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    cfg = NEWBIE_EXP01 if args.layers is None else NEWBIE_EXP01.replace(n_layers=args.layers)
    device = torch.device(args.device)
    side = args.size // 8
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 16, side, side, generator=gen)
    cap = torch.randn(args.batch, args.caption, cfg.cap_feat_dim, generator=gen)
    pooled = torch.randn(args.batch, cfg.clip_text_dim, generator=gen)
    t = torch.linspace(0.3, 0.8, args.batch)

    rows, reference = [], None
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        model = build(cfg, device, dtype)
        inputs = [a.to(device, dtype) for a in (x, cap, pooled)]
        with torch.no_grad():
            start = time.perf_counter()
            out = model(inputs[0], t.to(device), inputs[1], None, inputs[2]).float()
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        del model
        finite = bool(torch.isfinite(out).all())
        if reference is None:
            reference = out
        err = float((out.double() - reference.double()).norm() / reference.double().norm())
        rows.append((name, seconds, finite, err, float(out.abs().max())))
        print(f"{name} done in {seconds:.1f} s", file=sys.stderr, flush=True)

    print(
        f"config: dim {cfg.dim}, {cfg.n_layers} main layers, {args.size}x{args.size} ({side // 2 * (side // 2)} image "
        f"+ {args.caption} caption tokens), batch {args.batch}, {device}, torch {torch.__version__}"
    )
    print(f"{'dtype':5} {'forward s':>10} {'finite':>6} {'rel err vs fp32':>16} {'max |out|':>10}")
    for name, seconds, finite, err, peak in rows:
        print(f"{name:5} {seconds:10.1f} {str(finite):>6} {err:16.2e} {peak:10.3g}")


if __name__ == "__main__":
    main()
