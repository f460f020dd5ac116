"""Regional attention: what the mask costs at 1024x1024 and which outside-every-region policy leaks less.

    python benchmarks/bench_regions.py            # CPU; the attention timing uses fewer heads unless CUDA is present
    python benchmarks/bench_regions.py --quick    # smaller leakage study

Three tables:

1. the additive key bias at 1024x1024 (64x64 = 4096 image tokens + ~300 caption tokens = ~4.4k):
   memory and build time for a CFG batch (cond + uncond);
2. one joint-attention call with and without the bias (SDPA; on CUDA the bias selects the
   memory-efficient kernel, without it flash attention is allowed);
3. leakage: how much region 1's output and the background's (outside every region) move when
   only character 2's caption tokens change, relative to no regions, for each policy, on seeded
   random Next-DiTs (a proxy: no real weights are available here); and how far the background
   drifts from the unmasked model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from newbie_core.dit import NextDiT, NextDiTConfig  # noqa: E402
from newbie_core.dit.attention import sdpa_attention  # noqa: E402
from newbie_core.dit.config import official_ffn_hidden  # noqa: E402
from newbie_core.layout import Box  # noqa: E402
from newbie_core.regions import RegionalAttention, RegionSettings, SampleRegions  # noqa: E402


def _timeit(fn, repeat=3):
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def two_characters(n_cap=300):
    spans = {1: (40, 140), 2: (140, 240)}
    return SampleRegions(spans, {1: Box(0, 0, 450, 1000), 2: Box(550, 0, 1000, 1000)})


def mask_table(device):
    print("\n1. key bias at 1024x1024 (grid 64x64), CFG batch = cond + uncond")
    print(f"{'caption':>8} {'seq':>6} {'batch':>5} {'dtype':>9} {'MiB':>8} {'build ms':>9}")
    for n_cap in (150, 300, 512):
        for batch, dtype in ((2, torch.bfloat16), (2, torch.float32), (4, torch.bfloat16)):
            regions = RegionalAttention([two_characters()] * (batch // 2) + [None] * (batch // 2))
            seq = n_cap + 4096
            lens = torch.full((batch,), n_cap)

            def build(regions=regions, lens=lens, seq=seq, dtype=dtype):
                return regions._build(lens, 64, 64, seq, dtype, device)

            bias = build()
            mib = bias.untyped_storage().nbytes() / 2**20
            ms = _timeit(build) * 1e3
            print(f"{n_cap:>8} {seq:>6} {batch:>5} {str(dtype)[6:]:>9} {mib:>8.1f} {ms:>9.1f}")


def attention_table(device):
    heads = 24 if device.type == "cuda" else 4
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(f"\n2. one joint attention at seq 4396 (300 caption + 4096 image), {heads} heads x 96, batch 2, {dtype}")
    seq, batch = 4396, 2
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(batch, heads, seq, 96, generator=gen).to(device, dtype)
    k = torch.randn(batch, heads // 3 if heads % 3 == 0 else heads, seq, 96, generator=gen).to(device, dtype)
    v = torch.randn_like(k)
    regions = RegionalAttention([two_characters(), None])
    bias = regions._build(torch.tensor([300, 300]), 64, 64, seq, dtype, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    plain = _timeit(lambda: sdpa_attention(q, k, v, None), repeat=2)
    peak_plain = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    masked = _timeit(lambda: sdpa_attention(q, k, v, bias), repeat=2)
    peak_masked = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    print(f"{'':>12} {'ms':>9} {'peak MiB':>9}")
    print(f"{'no regions':>12} {plain * 1e3:>9.1f} {peak_plain:>9.0f}")
    print(f"{'regions':>12} {masked * 1e3:>9.1f} {peak_masked:>9.0f}   ratio {masked / plain:.2f}")


def _random_dit(seed, layers):
    cfg = NextDiTConfig(
        dim=96,
        n_layers=layers,
        n_refiner_layers=1,
        n_heads=4,
        n_kv_heads=2,
        ffn_hidden_dim=official_ffn_hidden(96, 32),
        cap_feat_dim=64,
        axes_dims=(8, 8, 8),
        clip_text_dim=32,
    )
    model = NextDiT(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.8 / max(1, p.shape[-1]) ** 0.5))
    return model.eval().requires_grad_(False)


def leakage_table(quick: bool):
    seeds = range(3 if quick else 8)
    layers = 4 if quick else 8
    grid = 16  # latent 32x32
    print(f"\n3. leakage into region 1 from character 2's text ({len(seeds)} random {layers}-layer DiTs, 16x16 tokens)")
    print("   character 1: x 0-450, character 2: x 550-1000, background strip 450-550 outside every region")
    layout = SampleRegions({1: (4, 14), 2: (14, 24)}, {1: Box(0, 0, 450, 1000), 2: Box(550, 0, 1000, 1000)})
    cols = (torch.arange(grid * grid) % grid + 0.5) * (1000 / grid)
    in_1 = cols < 450
    outside = (cols >= 450) & (cols < 550)
    rows = {"none (no regions)": None, "shared": "shared", "all": "all"}
    leak = {k: [] for k in rows}
    into_bg = {k: [] for k in rows}
    drift = {k: [] for k in rows}
    for seed in seeds:
        model = _random_dit(seed, layers)
        gen = torch.Generator().manual_seed(100 + seed)
        x = torch.randn(1, 16, 2 * grid, 2 * grid, generator=gen)
        cap = torch.randn(1, 30, 64, generator=gen)
        other = cap.clone()
        other[:, 14:24] = torch.randn(1, 10, 64, generator=gen)  # a different character 2
        pooled = torch.randn(1, 32, generator=gen)
        t = torch.tensor([0.3])

        def tokens(out):
            return out.view(1, 16, grid, 2, grid, 2).permute(0, 2, 4, 1, 3, 5).reshape(grid * grid, -1)

        ref = tokens(model(x, t, cap, None, pooled))
        for name, policy in rows.items():
            regions = None if policy is None else RegionalAttention([layout], RegionSettings(outside=policy))
            a = tokens(model(x, t, cap, None, pooled, regions=regions))
            regions = None if policy is None else RegionalAttention([layout], RegionSettings(outside=policy))
            b = tokens(model(x, t, other, None, pooled, regions=regions))
            leak[name].append(((a - b)[in_1].norm() / a[in_1].norm()).item())
            into_bg[name].append(((a - b)[outside].norm() / a[outside].norm()).item())
            drift[name].append(((a - ref)[outside].norm() / ref[outside].norm()).item())
    base = statistics.mean(leak["none (no regions)"])
    base_bg = statistics.mean(into_bg["none (no regions)"])
    print(f"{'policy':>18} {'into region 1':>14} {'(rel.)':>7} {'into background':>16} {'(rel.)':>7} {'bg drift':>9}")
    for name in rows:
        m, g = statistics.mean(leak[name]), statistics.mean(into_bg[name])
        print(
            f"{name:>18} {m:>14.4f} {m / base:>7.2f} {g:>16.4f} {g / base_bg:>7.2f} {statistics.mean(drift[name]):>9.4f}"
        )
    print("   into X: relative change of X's output when only character 2's text changes (lower = less leakage);")
    print("   bg drift: relative distance of the background from the unmasked model's")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-attention", action="store_true", help="skip the attention timing (slow on small CPUs)")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {device}, torch {torch.__version__}")
    with torch.no_grad():
        mask_table(device)
        if not args.skip_attention:
            attention_table(device)
        leakage_table(args.quick)


if __name__ == "__main__":
    main()
