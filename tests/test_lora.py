"""Every LoRA format of real-file-layouts §4 changes every one of its modules by exactly its expected delta.

Expected deltas are computed here from the file's own tensors and the format's scale rule (written out
independently of newbie_core.lora: explicit kron via einsum, explicit q/k/v row offsets from the DiT's
head counts, DoRA row norms in a loop), and checked on every parameter of the model: patched ones equal
``W + strength * delta``, all others are untouched.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from dit_helpers import tiny_model
from safetensors.torch import save_file

from newbie_core.errors import CheckpointError, ConfigError
from newbie_core.lora import apply_lora, block_multiplier, parse_lora_arg, plan_lora, read_lora, trigger_words

# module kinds of the official trainer's PEFT targets, incl. refiners, and the rest of the table
PEFT_TARGETS = [
    "layers.0.attention.qkv",
    "layers.1.attention.out",
    "layers.1.feed_forward.w2",
    "noise_refiner.0.attention.qkv",
    "context_refiner.0.feed_forward.w2",
    "time_text_embed.1",
    "clip_text_pooled_proj.1",
]
LOKR_TARGETS = [  # the six module kinds of a LyCORIS LoKr from the official trainer
    "layers.0.attention.qkv",
    "layers.0.attention.out",
    "layers.1.feed_forward.w1",
    "layers.1.feed_forward.w2",
    "layers.1.feed_forward.w3",
    "layers.0.adaLN_modulation.1",
]


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=11)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def weight(model, module):
    return dict(model.named_parameters())[module + ".weight"].detach().clone()


def check(model, lora_path, expected: dict, strength: float = 1.0, **kwargs):
    """Apply and compare every parameter: ``expected`` maps parameter name -> new value."""
    patched = copy.deepcopy(model)
    plan = apply_lora(patched, lora_path, strength, **kwargs)
    after = dict(patched.named_parameters())
    for name, before in model.named_parameters():
        if name in expected:
            assert torch.allclose(after[name], expected[name], atol=1e-6, rtol=1e-5), name
            assert not torch.allclose(after[name], before, atol=1e-6), f"{name} did not change"
        else:
            assert torch.equal(after[name], before), f"{name} changed but the file has no module for it"
    return plan


def low_rank(g, out, inn, r):
    return torch.randn(r, inn, generator=g) * 0.3, torch.randn(out, r, generator=g) * 0.3


# ------------------------------------------------------------------------------ PEFT (official trainer)


@pytest.mark.parametrize("variant", ["plain", "patterns", "rslora"])
def test_official_peft_scale_alpha_over_r_with_patterns_and_rslora(model, tmp_path, variant):
    g, r, alpha, strength = gen(1), 4, 2.0, 0.7
    cfg = {"r": r, "lora_alpha": alpha, "target_modules": ["qkv", "out", "w2", "time_text_embed.1"]}
    if variant == "patterns":
        cfg["rank_pattern"] = {"layers.1.attention.out": 2}
        cfg["alpha_pattern"] = {"layers.1.attention.out": 6.0}
    if variant == "rslora":
        cfg["use_rslora"] = True
    sd, expected = {}, {}
    for m in PEFT_TARGETS:
        w = weight(model, m)
        rank = 2 if (variant == "patterns" and m == "layers.1.attention.out") else r
        a, b = low_rank(g, w.shape[0], w.shape[1], rank)
        sd[f"base_model.model.{m}.lora_A.weight"], sd[f"base_model.model.{m}.lora_B.weight"] = a, b
        mod_alpha = 6.0 if (variant == "patterns" and m == "layers.1.attention.out") else alpha
        scale = mod_alpha / math.sqrt(rank) if variant == "rslora" else mod_alpha / rank
        expected[m + ".weight"] = w + strength * scale * torch.einsum("or,ri->oi", b, a)
    path = tmp_path / "adapter_model.safetensors"
    save_file(sd, str(path))
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    plan = check(model, path, expected, strength)
    assert plan.report.complete and len(plan.report.applied) == len(PEFT_TARGETS)
    assert "read r/alpha from adapter_config.json" in plan.report.notes


def test_peft_without_config_uses_scale_one_and_says_so(model, tmp_path):
    g = gen(2)
    w = weight(model, "layers.0.attention.qkv")
    a, b = low_rank(g, *w.shape, 3)
    path = tmp_path / "solo" / "x.safetensors"
    path.parent.mkdir()
    save_file({"base_model.model.layers.0.attention.qkv.lora_A.weight": a,
               "base_model.model.layers.0.attention.qkv.lora_B.weight": b}, str(path))  # fmt: skip
    plan = check(model, path, {"layers.0.attention.qkv.weight": w + b @ a})
    assert "no adapter_config.json or alpha in the file: PEFT modules use scale 1 (alpha = r)" in plan.report.notes


def naive_dora(w, delta, magnitude):
    out = torch.empty_like(w)
    for i in range(w.shape[0]):
        row = w[i] + delta[i]
        out[i] = magnitude[i] * row / torch.sqrt((row * row).sum())
    return out


def test_peft_dora_magnitude_rows(model, tmp_path):
    """Cosmic1Neko fork: rsLoRA + DoRA; W' = m * (W + s BA) / ||W + s BA|| per row, strength interpolates."""
    g, r, alpha, strength = gen(3), 4, 16.0, 0.6
    sd, expected = {}, {}
    for m in ("layers.0.attention.qkv", "layers.1.feed_forward.w2"):
        w = weight(model, m)
        a, b = low_rank(g, w.shape[0], w.shape[1], r)
        mag = w.norm(dim=1) * (1 + 0.3 * torch.rand(w.shape[0], generator=g))
        sd[f"base_model.model.{m}.lora_A.weight"], sd[f"base_model.model.{m}.lora_B.weight"] = a, b
        sd[f"base_model.model.{m}.lora_magnitude_vector"] = mag
        dora = naive_dora(w, (alpha / math.sqrt(r)) * (b @ a), mag)
        expected[m + ".weight"] = w + strength * (dora - w)
    path = tmp_path / "dora.safetensors"
    save_file(sd, str(path))
    (tmp_path / "dora.adapter_config.json").write_text(
        json.dumps({"r": r, "lora_alpha": alpha, "use_rslora": True, "use_dora": True})
    )
    check(model, path, expected, strength)


# ------------------------------------------------------------------------------ LyCORIS


def kron(a, b):
    return torch.einsum("ij,kl->ikjl", a, b).reshape(a.shape[0] * b.shape[0], a.shape[1] * b.shape[1])


@pytest.mark.parametrize("decomposed", [False, True])
def test_official_lokr_all_six_module_kinds(model, tmp_path, decomposed):
    """Full w1/w2: scale 1 whatever alpha says; decomposed w2_a/w2_b: alpha / rank."""
    g, alpha, rank, strength = gen(4), 8.0, 2, 1.3
    sd, expected = {}, {}
    for m in LOKR_TARGETS:
        w = weight(model, m)
        f = 4  # LyCORIS factor
        w1 = torch.randn(f, f, generator=g) * 0.3
        stem = "lycoris_" + m.replace(".", "_")
        sd[stem + ".lokr_w1"], sd[stem + ".alpha"] = w1, torch.tensor(alpha)
        if decomposed:
            w2a = torch.randn(w.shape[0] // f, rank, generator=g) * 0.3
            w2b = torch.randn(rank, w.shape[1] // f, generator=g) * 0.3
            sd[stem + ".lokr_w2_a"], sd[stem + ".lokr_w2_b"] = w2a, w2b
            delta = (alpha / rank) * kron(w1, w2a @ w2b)
        else:
            w2 = torch.randn(w.shape[0] // f, w.shape[1] // f, generator=g) * 0.3
            sd[stem + ".lokr_w2"] = w2
            delta = kron(w1, w2)
        expected[m + ".weight"] = w + strength * delta
    path = tmp_path / "lokr.safetensors"
    save_file(sd, str(path), metadata={"adapter_type": "lyco_lokr", "lora_rank": str(rank), "lora_alpha": str(alpha)})
    plan = check(model, path, expected, strength)
    assert len(plan.report.applied) == 6 and plan.report.complete
    assert plan.report.formats == ["LyCORIS LoKr", "lycoris names"]


def test_loha_and_full_diff(model, tmp_path):
    g, alpha, r = gen(5), 3.0, 2
    sd, expected = {}, {}
    w = weight(model, "layers.0.feed_forward.w1")
    h = [torch.randn(w.shape[0], r, generator=g) * 0.3, torch.randn(r, w.shape[1], generator=g) * 0.3]
    h += [torch.randn(w.shape[0], r, generator=g) * 0.3, torch.randn(r, w.shape[1], generator=g) * 0.3]
    stem = "lycoris_layers_0_feed_forward_w1"
    for slot, t in zip(("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"), h, strict=True):
        sd[f"{stem}.{slot}"] = t
    sd[stem + ".alpha"] = torch.tensor(alpha)
    expected["layers.0.feed_forward.w1.weight"] = w + (alpha / r) * (h[0] @ h[1]) * (h[2] @ h[3])
    out = weight(model, "final_layer.linear")
    bias = dict(model.named_parameters())["final_layer.linear.bias"].detach()
    diff, diff_b = torch.randn(out.shape, generator=g) * 0.1, torch.randn(bias.shape, generator=g) * 0.1
    sd["lycoris_final_layer_linear.diff"], sd["lycoris_final_layer_linear.diff_b"] = diff, diff_b
    expected["final_layer.linear.weight"], expected["final_layer.linear.bias"] = out + diff, bias + diff_b
    path = tmp_path / "loha.safetensors"
    save_file(sd, str(path))
    check(model, path, expected)


# ------------------------------------------------------------------------------ kohya, ComfyUI export, diffusion-pipe


def test_kohya_lora_unet_alpha_over_rank(model, tmp_path):
    g, sd, expected = gen(6), {}, {}
    for i, m in enumerate(PEFT_TARGETS + ["layers.0.adaLN_modulation.1", "x_embedder", "cap_embedder.1"]):
        w = weight(model, m)
        r = 2 + i % 3
        down, up = low_rank(g, w.shape[0], w.shape[1], r)
        stem = "lora_unet_" + m.replace(".", "_")
        sd[stem + ".lora_down.weight"], sd[stem + ".lora_up.weight"] = down, up
        sd[stem + ".alpha"] = torch.tensor(float(i + 1))
        expected[m + ".weight"] = w + ((i + 1) / r) * (up @ down)
    path = tmp_path / "kohya.safetensors"
    save_file(sd, str(path))
    check(model, path, expected)


def test_cosmic_comfy_export_dora_scale_no_alpha(model, tmp_path):
    g, sd, expected = gen(7), {}, {}
    for m in ("layers.0.attention.qkv", "context_refiner.0.attention.out"):
        w = weight(model, m)
        down, up = low_rank(g, w.shape[0], w.shape[1], 3)
        mag = w.norm(dim=1, keepdim=True) * 1.2  # [out, 1]
        sd[f"diffusion_model.{m}.lora_down.weight"], sd[f"diffusion_model.{m}.lora_up.weight"] = down, up
        sd[f"diffusion_model.{m}.dora_scale"] = mag
        expected[m + ".weight"] = naive_dora(w, up @ down, mag[:, 0])
    path = tmp_path / "cosmic_comfy.safetensors"
    save_file(sd, str(path))
    check(model, path, expected)


def test_diffusion_pipe_lora_a_b_with_adapter_config(model, tmp_path):
    g, sd, expected = gen(8), {}, {}
    for m in ("layers.1.attention.qkv", "layers.1.feed_forward.w3", "layers.0.adaLN_modulation.1", "t_embedder.mlp.2"):
        w = weight(model, m)
        a, b = low_rank(g, w.shape[0], w.shape[1], 4)
        sd[f"diffusion_model.{m}.lora_A.weight"], sd[f"diffusion_model.{m}.lora_B.weight"] = a, b
        expected[m + ".weight"] = w + (8.0 / 4) * (b @ a)
    path = tmp_path / "adapter_model.safetensors"
    save_file(sd, str(path))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    check(model, path, expected)


# ------------------------------------------------------------------------------ diffusers Lumina2 names


@pytest.mark.parametrize("block", ["layers.1", "noise_refiner.0", "context_refiner.0"])
def test_diffusers_names_into_gqa_rows_of_qkv(model, tmp_path, block):
    cfg = model.config
    head_dim = cfg.dim // cfg.n_heads
    q_rows, kv_rows = cfg.n_heads * head_dim, cfg.n_kv_heads * head_dim  # 48 | 24 | 24 here, not thirds
    g, sd = gen(9), {}
    qkv = weight(model, f"{block}.attention.qkv")
    deltas = []
    for letter, rows in (("q", q_rows), ("k", kv_rows), ("v", kv_rows)):
        a, b = low_rank(g, rows, cfg.dim, 2)
        sd[f"transformer.{block}.attn.to_{letter}.lora_A.weight"] = a
        sd[f"transformer.{block}.attn.to_{letter}.lora_B.weight"] = b
        deltas.append(b @ a)
    expected = {f"{block}.attention.qkv.weight": qkv + torch.cat(deltas, dim=0)}
    names = {"attn.to_out.0": "attention.out", **{f"feed_forward.linear_{i}": f"feed_forward.w{i}" for i in (1, 2, 3)}}
    if block != "context_refiner.0":
        names["norm1.linear"] = "adaLN_modulation.1"
    for theirs, ours in names.items():
        w = weight(model, f"{block}.{ours}")
        a, b = low_rank(g, w.shape[0], w.shape[1], 2)
        sd[f"transformer.{block}.{theirs}.lora_A.weight"], sd[f"transformer.{block}.{theirs}.lora_B.weight"] = a, b
        expected[f"{block}.{ours}.weight"] = w + b @ a
    path = tmp_path / "pytorch_lora_weights.safetensors"
    save_file(sd, str(path))
    plan = check(model, path, expected)
    assert (f"transformer.{block}.attn.to_k", f"{block}.attention.qkv.weight[48:72]") in plan.report.applied


# ------------------------------------------------------------------------------ reports, strengths, words


def test_unmatched_partial_and_unused_are_reported(model, tmp_path, caplog):
    g = gen(10)
    w = weight(model, "layers.0.attention.out")
    a, b = low_rank(g, *w.shape, 2)
    sd = {
        "base_model.model.layers.0.attention.out.lora_A.weight": a,
        "base_model.model.layers.0.attention.out.lora_B.weight": b,
        "base_model.model.layers.9.attention.out.lora_A.weight": a,  # no layer 9 in this model
        "base_model.model.layers.9.attention.out.lora_B.weight": b,
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": a,  # a text-encoder module
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": b,
        "base_model.model.layers.1.attention.out.lora_A.weight": a,  # lora_B missing
        "base_model.model.layers.1.attention.qkv.lora_A.weight": torch.zeros(2, 7),  # wrong in-features
        "base_model.model.layers.1.attention.qkv.lora_B.weight": torch.zeros(96, 2),
        "some_stray_tensor": torch.zeros(1),
    }
    path = tmp_path / "mixed.safetensors"
    save_file({k: v.clone() for k, v in sd.items()}, str(path))
    with caplog.at_level("WARNING", logger="newbie"):
        plan = check(model, path, {"layers.0.attention.out.weight": w + b @ a})
    rep = plan.report
    assert rep.unmatched == ["base_model.model.layers.9.attention.out", "lora_te_text_model_encoder_layers_0_mlp_fc1"]
    assert rep.partial == [
        ("base_model.model.layers.1.attention.out", "no complete adapter (has lora_A)"),
        (
            "base_model.model.layers.1.attention.qkv",
            "delta shape (96, 7) does not fit layers.1.attention.qkv.weight [96, 48]; module skipped",
        ),
    ]
    assert rep.unused_keys == ["some_stray_tensor"]
    summary = rep.summary()
    assert summary.splitlines()[0] == "mixed.safetensors: PEFT lora_A/lora_B, base_model.model names; 1 modules applied"
    assert (
        "unmatched (2): base_model.model.layers.9.attention.out, lora_te_text_model_encoder_layers_0_mlp_fc1" in summary
    )
    assert any("unmatched (2)" in r.message for r in caplog.records)


def test_nothing_matching_is_an_error(model, tmp_path):
    path = tmp_path / "other_model.safetensors"
    save_file({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_down_blocks_0.lora_up.weight": torch.zeros(4, 2)}, str(path))  # fmt: skip
    with pytest.raises(CheckpointError, match=r"other_model.safetensors: no module of this LoRA matches the model"):
        apply_lora(copy.deepcopy(model), path)


def test_block_strengths(model, tmp_path):
    g, sd, expected = gen(12), {}, {}
    mult = {"layers.0.attention.qkv": 0.5, "layers.1.attention.out": 2.0, "layers.1.feed_forward.w2": 2.0}
    for m in PEFT_TARGETS:
        w = weight(model, m)
        down, up = low_rank(g, w.shape[0], w.shape[1], 2)
        sd[f"diffusion_model.{m}.lora_down.weight"], sd[f"diffusion_model.{m}.lora_up.weight"] = down, up
        k = mult.get(m, 0.0 if "refiner" in m else 1.0)
        if k:
            expected[m + ".weight"] = w + 0.8 * k * (up @ down)
    path = tmp_path / "blocks.safetensors"
    save_file(sd, str(path))
    check(model, path, expected, 0.8, block_strengths="refiners=0, layers.0=0.5, layers.1-1=2")
    with pytest.raises(ConfigError, match=r"block strength group 'middle' is unknown"):
        block_multiplier("middle=1")
    with pytest.raises(ConfigError, match=r"block strength layers.0='x': 'x' is not a number"):
        block_multiplier("layers.0=x")


def test_trigger_words_from_metadata():
    assert trigger_words({"modelspec.trigger_phrase": "<n>rem</n>, maid"}) == "<n>rem</n>, maid"
    freq = {"10_style": {"sks style": 40, "1girl": 12, "solo": 12}, "5_extra": {"1girl": 3}}
    assert trigger_words({"ss_tag_frequency": json.dumps(freq)}, most=2) == "sks style, 1girl"
    assert trigger_words({}) == ""


def test_lora_arg_checked_before_models_load(tmp_path):
    path = tmp_path / "style.safetensors"
    save_file({"a.lora_down.weight": torch.zeros(1, 1)}, str(path))
    assert parse_lora_arg(f"{path}:0.75") == (path, 0.75)
    assert parse_lora_arg(str(path)) == (path, 1.0)
    with pytest.raises(CheckpointError, match=r"missing.safetensors: file not found"):
        parse_lora_arg(str(tmp_path / "missing.safetensors") + ":0.5")
    vae = tmp_path / "ae.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(8, 16, 3, 3)}, str(vae))
    with pytest.raises(CheckpointError, match=r"ae.safetensors: no LoRA tensors .* \(it is a FLUX VAE \(16 latent "):
        parse_lora_arg(f"{vae}:0.5")
    pickle = tmp_path / "old.pt"
    pickle.write_bytes(b"x" * 16)
    with pytest.raises(CheckpointError, match=r"old.pt: pickled checkpoints \(.pt\) are not loaded"):
        read_lora(pickle)


def test_plan_is_shared_by_node_and_pipeline(model, tmp_path):
    """The node hands TargetPatch to ComfyUI; ``with_tensors`` (ComfyUI's prefetch copy) keeps the maths."""
    g = gen(13)
    w = weight(model, "layers.0.attention.qkv")
    a, b = low_rank(g, *w.shape, 2)
    path = tmp_path / "p.safetensors"
    save_file({"diffusion_model.layers.0.attention.qkv.lora_A.weight": a,
               "diffusion_model.layers.0.attention.qkv.lora_B.weight": b}, str(path))  # fmt: skip
    plan = plan_lora(read_lora(path), {n: tuple(p.shape) for n, p in model.named_parameters()})
    patch = plan.patches["layers.0.attention.qkv.weight"]
    copy_ = patch.with_tensors([t.clone() for t in patch.tensors])
    assert torch.allclose(copy_.apply(w, 0.5), w + 0.5 * (b @ a), atol=1e-6)
