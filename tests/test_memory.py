"""Memory profiles: streaming is the resident computation, profiles compose, each stage's peak is reported."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
from dit_helpers import inputs, tiny_model

from newbie_core import memory
from newbie_core.cli import main
from newbie_core.dit import NEWBIE_EXP01, NextDiT, cpu_pack, tiny_config
from newbie_core.dit.layers import RMSNorm
from newbie_core.pipeline import GenerationSettings, NewBiePipeline


def test_streamed_blocks_compute_exactly_the_resident_result_and_prefetch_one_ahead():
    model = tiny_model(seed=60, n_layers=4)
    x, t, cap, pooled = inputs(model.config, batch=2, h=4, w=6, cap_len=5)
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, 3:] = 0
    resident = model(x, t, cap, mask, pooled)
    masters = [p.data_ptr() for p in model.layers.parameters()]
    streamer = memory.stream(model, "cpu")
    seen = []
    spies = [
        blk.register_forward_pre_hook(lambda _m, _a, i=i: seen.append((i, list(streamer.fetches))))
        for i, blk in enumerate(model.layers)
    ]
    streamed = model(x, t, cap, mask, pooled)
    assert torch.equal(streamed, resident)
    # when block i starts computing, block i + 1's copy has already been started
    assert [(i, f[-1]) for i, f in seen] == [(0, 1), (1, 2), (2, 3), (3, 3)]
    assert [p.data_ptr() for p in model.layers.parameters()] == masters  # the CPU masters are back
    for h in spies:
        h.remove()
    streamer.remove()


def test_every_profile_generates_what_the_resident_pipeline_generates(monkeypatch):
    # streamed blocks are never packed for the CPU (tests/test_cpu_pack.py); compare like with like, bit for bit
    monkeypatch.setattr(cpu_pack, "packed_for_cpu", lambda model: contextlib.nullcontext(0))
    settings = GenerationSettings(prompt="1girl", width=64, height=64, steps=2, seed=3)
    resident = NewBiePipeline.tiny().generate(settings)
    for vram in (12, 6):
        pipe = NewBiePipeline.tiny()
        memory.apply_profile(pipe, memory.get_profile(vram))
        got = pipe.generate(settings)
        assert torch.equal(got.latents, resident.latents), vram
        assert got.images[0].tobytes() == resident.images[0].tobytes()  # tiled decode at 64: no tile needed here
    assert set(got.memory.stages) == {"encode", "sample", "decode"}


def test_profiles_compose_the_documented_switches():
    p = memory.PROFILES
    assert sorted(p) == [6, 8, 12, 24]
    assert not p[24].offload_text_encoders and p[12].offload_text_encoders and not p[12].dit_storage
    assert p[8].dit_storage == "fp8_e4m3fn" and p[8].stream_text_encoders and not p[8].stream_dit
    assert p[6].stream_dit and p[6].dit_storage == "fp8_e4m3fn"
    with pytest.raises(ValueError, match=r"--vram must be one of 24, 12, 8, 6 \(GB\), got 7"):
        memory.get_profile(7)


def test_cli_reports_peak_memory_per_stage(tmp_path):
    err = io.StringIO()
    code = main(
        ["generate", "--vram", "6", "--steps", "2", "--output", str(tmp_path / "a.png")],
        stdout=io.StringIO(),
        stderr=err,
    )
    assert code == 0
    line = [ln for ln in err.getvalue().splitlines() if ln.startswith("memory")][0]
    assert "CPU: process peak RSS so far" in line
    assert all(f"{stage} " in line for stage in ("encode", "sample", "decode"))


def test_pipeline_step_cache_zero_is_the_uncached_run_and_a_threshold_is_recorded():
    pipe = NewBiePipeline.tiny()
    base = GenerationSettings(prompt="1girl", width=32, height=32, steps=4, seed=1)
    plain = pipe.generate(base)
    cached = pipe.generate(GenerationSettings(**{**base.to_dict(), "step_cache": 0.5}))
    assert cached.metadata()["step_cache"] == 0.5
    assert pipe.transformer.layer_runner is None  # restored after the run
    assert torch.isfinite(cached.latents).all() and not torch.equal(cached.latents, plain.latents)


def test_bad_step_cache_flag_is_one_line_before_any_model_loads():
    err = io.StringIO()
    assert main(["generate", "--step-cache", "2"], stdout=io.StringIO(), stderr=err) == 2  # usage errors return 2
    assert err.getvalue() == (
        "error: argument --step-cache: must be from 0 to 1 (0 = off), not 2 (see python -m newbie_core generate --help)\n"
    )


class _HostLinear(torch.nn.Linear):
    """Stands for a host's casting/offloading Linear (core's ``operations.Linear``)."""


class _HostNorm(RMSNorm):
    """Stands for the host's casting RMSNorm (the pack's ``operations.NewBieRMSNorm`` in ComfyUI)."""


class _host_operations:
    Linear = _HostLinear
    NewBieRMSNorm = _HostNorm


@pytest.mark.parametrize("config", [tiny_config(), NEWBIE_EXP01], ids=["tiny", "released"])
def test_every_weight_lives_in_a_layer_built_from_the_hosts_operations(config):
    """What core's low-VRAM partial loading relies on (the host suite runs the real thing): a weight created
    outside ``operations`` would be left resident, or moved behind the patcher's back."""
    with torch.device("meta"):
        model = NextDiT(config, operations=_host_operations)
    outside = [
        f"{module_name}.{name}"
        for module_name, module in model.named_modules()
        for name, _ in module.named_parameters(recurse=False)
        if not isinstance(module, (_HostLinear, _HostNorm))
    ]
    assert outside == []
    assert sum(p.numel() for p in model.parameters()) > (3_000_000_000 if config is NEWBIE_EXP01 else 0)
