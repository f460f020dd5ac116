"""Next-DiT forward time and peak memory: ours vs ComfyUI core's NextDiT on identical weights.

    python benchmarks/bench_dit.py                      # ours only (CPU; full config too when CUDA is present)
    python benchmarks/bench_dit.py --compile            # ours with the repeated block compiled (the GPU target)
    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/bench_dit.py   # adds core's NextDiT and the ratio

Each measurement runs in its own process so peak memory is that model's alone. Prints a table.
On the CPU, ``ours`` samples as the pipeline does, from oneDNN-packed Linear weights
(``newbie_core.dit.cpu_pack``); ``ours-dense`` is the same model on torch's default dense Linear.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {
    # name: (config overrides, latent side, caption tokens, batch)
    "small": (
        dict(
            dim=384,
            n_layers=4,
            n_refiner_layers=1,
            n_heads=4,
            n_kv_heads=2,
            ffn_hidden_dim=1536,
            cap_feat_dim=256,
            axes_dims=(32, 32, 32),
            clip_text_dim=256,
        ),
        32,
        64,
        1,
    ),
    "mid": (
        dict(
            dim=1152,
            n_layers=8,
            n_refiner_layers=2,
            n_heads=12,
            n_kv_heads=4,
            ffn_hidden_dim=4608,
            cap_feat_dim=1024,
            axes_dims=(32, 32, 32),
            clip_text_dim=1024,
        ),
        64,
        128,
        1,
    ),
    "full": ({}, 128, 256, 1),  # the released 3.5B model at 1024x1024
}


def _core_model(cfg, device, dtype):
    sys.path.insert(0, os.environ["COMFYUI_PATH"])
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    args.cpu = device == "cpu"
    import comfy.ops
    from comfy.ldm.lumina.model import NextDiT as CoreNextDiT

    model = CoreNextDiT(
        patch_size=cfg.patch_size,
        in_channels=cfg.in_channels,
        dim=cfg.dim,
        n_layers=cfg.n_layers,
        n_refiner_layers=cfg.n_refiner_layers,
        n_heads=cfg.n_heads,
        n_kv_heads=cfg.n_kv_heads,
        multiple_of=256,
        ffn_dim_multiplier=4.0,
        norm_eps=cfg.norm_eps,
        qk_norm=cfg.qk_norm,  # core's FFN: 4*dim rounded to 256
        cap_feat_dim=cfg.cap_feat_dim,
        axes_dims=list(cfg.axes_dims),
        axes_lens=list(cfg.axes_lens),
        clip_text_dim=cfg.clip_text_dim,
        operations=comfy.ops.disable_weight_init,
        device=device,
        dtype=dtype,
    )
    return model


def measure(name: str, impl: str, device: str, dtype_name: str, repeats: int, compile_block: bool = False) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from newbie_core.dit import NEWBIE_EXP01, NextDiT
    from newbie_core.dit.cpu_pack import packed_for_cpu

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    overrides, side, cap_len, batch = CONFIGS[name]
    cfg = NEWBIE_EXP01.replace(**overrides)
    torch.manual_seed(0)
    with torch.device("meta"):
        ours = NextDiT(cfg)
    ours = ours.to_empty(device=device).to(dtype)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.02)
    ours.eval().requires_grad_(False)
    model = ours
    if compile_block and impl != "core":
        from newbie_core.dit.compile import compile_repeated_block

        compile_repeated_block(ours)
    if impl == "core":
        model = _core_model(cfg, device, dtype)
        missing, unexpected = model.load_state_dict(ours.state_dict(), strict=False)
        assert not missing, missing
        del ours
        model.eval().requires_grad_(False)
    x = torch.randn(batch, 16, side, side, device=device, dtype=dtype)
    cap = torch.randn(batch, cap_len, cfg.cap_feat_dim, device=device, dtype=dtype)
    pooled = torch.randn(batch, cfg.clip_text_dim, device=device, dtype=dtype)
    sigma = torch.full((batch,), 0.5, device=device)

    def run():
        if impl == "core":
            return model(x, sigma, cap, cap_len, clip_text_pooled=pooled)
        return model(x, 1 - sigma, cap, None, pooled)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    packing = packed_for_cpu(model) if impl == "ours" and device == "cpu" else contextlib.nullcontext()
    with torch.no_grad(), packing:
        run()
        run()
        sync()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            sync()
            times.append(time.perf_counter() - t0)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "config": name,
        "impl": impl,
        "device": device,
        "dtype": dtype_name,
        "tokens": cap_len + (side // 2) ** 2,
        "ms": statistics.median(times) * 1000,
        "peak_mib": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=None, help="small mid full")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=None)
    parser.add_argument("--compile", action="store_true", help="compile our repeated block (core stays eager)")
    parser.add_argument("--one", nargs=4, metavar=("CONFIG", "IMPL", "DEVICE", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.repeats, args.compile)))
        return

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    configs = args.configs or (["small", "mid", "full"] if device == "cuda" else ["small", "mid"])
    dtype = "bf16" if device == "cuda" else "fp32"
    impls = (
        ["ours"] + (["ours-dense"] if device == "cpu" else []) + (["core"] if os.environ.get("COMFYUI_PATH") else [])
    )
    rows = []
    for name in configs:
        for impl in impls:
            cmd = [sys.executable, __file__, "--one", name, impl, device, dtype, "--repeats", str(args.repeats)]
            cmd += ["--compile"] if args.compile else []
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{name}/{impl} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(
        f"{'config':7} {'impl':10} {'device':6} {'dtype':5} {'tokens':>7} {'forward ms':>11} {'peak MiB':>9} {'ours/core':>9}"
    )
    for r in rows:
        core = next((c for c in rows if c["config"] == r["config"] and c["impl"] == "core"), None)
        ratio = f"{r['ms'] / core['ms']:.2f}" if core and r["impl"] != "core" else ""
        print(
            f"{r['config']:7} {r['impl']:10} {r['device']:6} {r['dtype']:5} {r['tokens']:7d} {r['ms']:11.1f} "
            f"{r['peak_mib']:9.0f} {ratio:>9}"
        )


if __name__ == "__main__":
    main()
