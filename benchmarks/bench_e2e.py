"""End-to-end generation benchmark: s/step, s/image and peak memory per stage, for each dtype x memory profile.

    python benchmarks/bench_e2e.py                                   # CUDA: full 3.5B config, 1024², 28 steps
    python benchmarks/bench_e2e.py --config small --size 256 --steps 4   # what a CPU can do in minutes
    python benchmarks/bench_e2e.py --models-dir ~/ComfyUI/models     # the real files (real Gemma/Jina/VAE)
    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/bench_e2e.py ...  # adds the forward ratio ours/core

Without ``--models-dir`` the DiT has the named config with seeded random weights (same shapes and cost as the
real one for ``full``), the text encoders are the embedded tiny stand-ins (so "encode" is not Gemma's cost) and
the VAE is the FLUX architecture with random weights (``--vae tiny`` on a CPU). CFG is on for every step
(cfg_trunc 1), solver euler (one forward per step per CFG batch). Each row runs in its own process so the
peaks are that row's alone. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

DTYPES = {"fp32": ("fp32", None), "bf16": ("bf16", None), "fp16": ("fp16", None), "fp8": ("bf16", "fp8_e4m3fn")}


def _random_pipeline(config_name: str, device: str, compute: str, storage: str | None, vae: str):
    import torch
    from bench_dit import CONFIGS

    from newbie_core import tiny
    from newbie_core.dit import NEWBIE_EXP01, NextDiT
    from newbie_core.dit.layers import casting_operations
    from newbie_core.pipeline import NewBiePipeline
    from newbie_core.vae import AutoEncoder, VAEConfig
    from newbie_core.weights import parse_dtype

    overrides = dict(CONFIGS[config_name][0])
    overrides.update(cap_feat_dim=tiny.GEMMA_HIDDEN, clip_text_dim=tiny.JINA_HIDDEN)
    cfg = NEWBIE_EXP01.replace(**overrides)
    compute_dtype = parse_dtype(compute)
    ops = casting_operations if storage else torch.nn
    with torch.device("meta"):
        dit = NextDiT(cfg, operations=ops)
    dit = dit.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in dit.named_parameters():
            if "norm" in name or name.startswith("cap_embedder.0"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 / p.shape[-1] ** 0.5))
    dit = dit.to(parse_dtype(storage) or compute_dtype).eval().requires_grad_(False)
    dit.compute_dtype = compute_dtype
    autoencoder = tiny.tiny_vae() if vae == "tiny" else AutoEncoder(VAEConfig()).eval().requires_grad_(False)
    autoencoder = autoencoder.to(torch.float32 if compute_dtype == torch.float16 else compute_dtype)
    return NewBiePipeline(dit, tiny.tiny_text_encoders(), autoencoder, device="cpu", label=f"random {config_name}")


def run_one(args, dtype_name: str, vram: int) -> dict:
    import torch

    from newbie_core import memory
    from newbie_core.pipeline import GenerationSettings, NewBiePipeline

    compute, storage = DTYPES[dtype_name]
    device = args.device
    profile = memory.get_profile(vram)
    if args.models_dir:
        pipe = NewBiePipeline.from_models_dir(args.models_dir, device=device, dtype=compute, vram=vram)
    else:
        pipe = _random_pipeline(args.config, device, compute, storage or profile.dit_storage, args.vae)
        pipe.device = torch.device(device)
        pipe.vae.to(device)
        memory.apply_profile(pipe, profile)
    if args.compile:
        from newbie_core.dit.compile import compile_repeated_block

        compile_repeated_block(pipe.transformer)
    settings = GenerationSettings(
        prompt="1girl, smile", width=args.size, height=args.size, steps=args.steps, cfg=5.0, cfg_trunc=1.0
    )
    settings.solver = "euler"
    if args.warmup:
        pipe.generate(GenerationSettings(**{**settings.to_dict(), "steps": 1}))
    start = time.perf_counter()
    result = pipe.generate(settings)
    total = time.perf_counter() - start
    mem = result.memory
    return {
        "dtype": dtype_name,
        "vram": vram,
        "s_step": mem.seconds["sample"] / args.steps,
        "s_image": total,
        **{f"peak_{k}": v for k, v in mem.stages.items()},
        "finite": bool(torch.isfinite(result.latents).all()),
    }


def forward_ratio(config_name: str, device: str) -> str:
    if not os.environ.get("COMFYUI_PATH") or config_name not in ("small", "mid", "full"):
        return "n/a (set COMFYUI_PATH)"
    dtype = "bf16" if device == "cuda" else "fp32"
    times = {}
    for impl in ("ours", "core"):
        cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_dit.py"), "--one", config_name, impl, device, dtype]
        proc = subprocess.run(cmd + ["--repeats", "3"], capture_output=True, text=True)
        if proc.returncode != 0:
            return f"failed: {proc.stderr.strip().splitlines()[-1:]}"
        times[impl] = json.loads(proc.stdout.strip().splitlines()[-1])["ms"]
    return f"{times['ours'] / times['core']:.2f} ({times['ours']:.0f} ms vs {times['core']:.0f} ms, {dtype})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="small | mid | full (default: full on CUDA, small on CPU)")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default 1024 on CUDA, 256 CPU)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default 28 on CUDA, 4 on CPU)")
    parser.add_argument("--dtypes", nargs="+", default=None, help="fp32 bf16 fp16 fp8 (fp8 = fp8 storage, bf16 math)")
    parser.add_argument("--vram", nargs="+", type=int, default=None, help="profiles to run (default: all)")
    parser.add_argument("--models-dir", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--vae", choices=["full", "tiny"], default=None)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--warmup", action="store_true", help="one 1-step image first (compile, allocator)")
    parser.add_argument("--one", nargs=2, metavar=("DTYPE", "VRAM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    cuda = torch.cuda.is_available() and args.device in (None, "cuda")
    args.device = args.device or ("cuda" if cuda else "cpu")
    args.config = args.config or ("full" if cuda else "small")
    args.size = args.size or (1024 if cuda else 256)
    args.steps = args.steps or (28 if cuda else 4)
    args.vae = args.vae or ("full" if cuda else "tiny")
    if args.one:
        print(json.dumps(run_one(args, args.one[0], int(args.one[1]))))
        return

    dtypes = args.dtypes or (["bf16", "fp16", "fp8"] if cuda else ["fp32", "bf16", "fp16", "fp8"])
    profiles = args.vram or [24, 12, 8, 6]
    passthrough = [a for a in sys.argv[1:] if a not in ("--dtypes", "--vram", *dtypes, *map(str, profiles))]
    rows = []
    for dtype in dtypes:
        for vram in profiles:
            cmd = [sys.executable, __file__, *passthrough, "--device", args.device, "--one", dtype, str(vram)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{dtype}/{vram} GB failed:\n{proc.stderr[-1500:]}", file=sys.stderr)
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    unit = "GiB GPU alloc" if args.device == "cuda" else "GiB RSS (process peak so far)"
    print(
        f"config {args.config}, {args.size}x{args.size}, {args.steps} steps euler, CFG 5 on every step, "
        f"device {args.device}, torch {torch.__version__}; peaks in {unit}"
    )
    print(f"{'dtype':5} {'vram':>4} {'s/step':>8} {'s/image':>8} {'encode':>7} {'sample':>7} {'decode':>7} finite")
    for r in rows:
        print(
            f"{r['dtype']:5} {r['vram']:4d} {r['s_step']:8.3f} {r['s_image']:8.2f} {r['peak_encode']:7.2f} "
            f"{r['peak_sample']:7.2f} {r['peak_decode']:7.2f} {r['finite']}"
        )
    print(f"forward ratio ours/core ({args.config}): {forward_ratio(args.config, args.device)}")


if __name__ == "__main__":
    main()
