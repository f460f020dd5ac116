"""Character regions in real ComfyUI: spans on the CONDITIONING, the regions node, our MODEL in any sampler."""

from __future__ import annotations

import sys

import pytest
import torch
from model_files import stock_vae_width, write_tiny_models

from newbie_core.text import SYSTEM_PROMPTS

TWO = """<character_1>
<n>a</n>
<gender>1girl</gender>
</character_1>

<character_2>
<n>b</n>
<gender>1boy</gender>
</character_2>

<general_tags>
<count>1girl, 1boy</count>
</general_tags>"""
WITH_REGION = TWO.replace("<gender>1girl</gender>\n", "<gender>1girl</gender>\n<region>0,0,500,1000</region>\n")
SIDE_BY_SIDE = "character_1=0,0,500,1000\ncharacter_2=500,0,1000,1000"
FULL = "character_1=0,0,1000,1000\ncharacter_2=0,0,1000,1000"


@pytest.fixture()
def tiny(models_dir):
    return write_tiny_models(models_dir, vae_width=stock_vae_width())


def _clip(node_classes):
    loader = node_classes["NewBieTextEncoderLoader"]
    return loader.execute("gemma_tiny.safetensors", "jina_tiny.safetensors", "fp32", "cpu").result[0]


def test_encode_records_spans_and_strips_region_tags(node_classes, tiny):
    clip = _clip(node_classes)
    encode = node_classes["NewBieTextEncode"]
    ((cond, extras),) = encode.execute(clip, WITH_REGION, "auto", "").result[0]
    ((plain, _),) = encode.execute(clip, TWO, "auto", "").result[0]
    assert torch.equal(cond, plain)  # the region tag never reached the encoders
    assert [b.as_list() for b in extras["newbie_regions"].values()] == [[0, 0, 500, 1000]]
    spans = extras["newbie_spans"]
    tok = clip.tokenizer.gemma
    ids = tok.encode(SYSTEM_PROMPTS["xml"] + TWO)
    assert cond.shape[1] == len(ids) == spans.length
    for n in (1, 2):
        a, b = spans.characters[n]
        block = TWO[TWO.index(f"<character_{n}>") : TWO.index(f"</character_{n}>") + 14]
        assert " ".join(tok.sp.decode(ids[a:b]).split()) == " ".join(block.split())
    ((kept, kept_extras),) = encode.execute(clip, WITH_REGION, "auto", "", keep_region_tags=True).result[0]
    assert kept.shape[1] > cond.shape[1]


def test_regions_node_rejects_bad_input_with_a_clear_line(node_classes, tiny):
    clip = _clip(node_classes)
    node = node_classes["NewBieRegions"]
    pos = node_classes["NewBieTextEncode"].execute(clip, TWO, "auto", "").result[0]
    bad = "character_1=0,0,500"
    expected = (
        "NewBie Character Regions: regions character_1=0,0,500: needs four numbers x0,y0,x1,y1 from 0 to 1000, "
        'got "0,0,500"'
    )
    assert node.validate_inputs(regions=bad) == expected
    with pytest.raises(ValueError) as info:
        node.execute(pos, bad, "shared", 1.0, 0.0)
    assert str(info.value) == expected
    with pytest.raises(ValueError) as info:
        node.execute(pos, "character_3=0,0,10,10", "shared", 1.0, 0.0)
    assert str(info.value) == (
        "NewBie Character Regions: character_3 has a region but the prompt has no <character_3> "
        "(it has character_1, character_2)"
    )
    assert node.validate_inputs(regions=SIDE_BY_SIDE, layers="9-1") == (
        'NewBie Character Regions: layers "9-1" must be layer numbers or ranges such as 0-11,20 (or all)'
    )
    stock = clip.encode_from_tokens_scheduled(clip.tokenize(TWO))
    with pytest.raises(ValueError, match="the conditioning has no character token spans; encode the prompt with"):
        node.execute(stock, SIDE_BY_SIDE, "shared", 1.0, 0.0)
    long = TWO.replace("<gender>1girl", "<gender>" + ", ".join(["1girl"] * 300)).replace(
        "<gender>1boy</gender>", "<gender>1boy</gender><region>0,0,10,10</region>"
    )
    with pytest.raises(ValueError) as info:
        node_classes["NewBieTextEncode"].execute(clip, long, "auto", "")
    assert str(info.value) == (
        "NewBie Text Encode: character_2 has a region but its block was cut off by the 512-token limit"
    )


def _two_characters(node_classes):
    """The tiny MODEL, the two-character positive, an empty negative, side-by-side regions and a 64² latent."""
    model = node_classes["NewBieDiTLoader"].execute("NewBie-tiny.safetensors", "fp32").result[0]
    clip = _clip(node_classes)
    pos = node_classes["NewBieTextEncode"].execute(clip, TWO, "auto", "").result[0]
    neg = node_classes["NewBieTextEncode"].execute(clip, "", "auto", "").result[0]
    regional = node_classes["NewBieRegions"].execute(pos, SIDE_BY_SIDE, "shared", 1.0, 0.0).result[0]
    latent = node_classes["NewBieEmptyLatent"].execute("custom", 64, 64, 1).result[0]
    return model, pos, neg, regional, latent


def test_regions_apply_in_our_sampler_and_stock_ones_uncond_unmasked(node_classes, tiny, comfy, monkeypatch):
    import comfy.sample

    model, pos, neg, regional, latent = _two_characters(node_classes)
    full = node_classes["NewBieRegions"].execute(pos, FULL, "shared", 1.0, 0.0).result[0]
    mask = torch.zeros(1, 64, 64)
    mask[:, :, :32] = 1.0
    masked = node_classes["NewBieRegions"].execute(pos, "", "shared", 1.0, 0.0, mask_1=mask).result[0]

    pack_model = sys.modules[node_classes["NewBieSampler"].__module__.rsplit(".", 2)[0] + ".newbie_core.dit.model"]
    original = pack_model.NextDiT.forward
    calls = []

    def spy(self, x, t, cap, mask=None, pooled=None, attention=None, regions=None):
        calls.append((x.shape[0], regions))
        return original(self, x, t, cap, mask, pooled, attention=attention, regions=regions)

    monkeypatch.setattr(pack_model.NextDiT, "forward", spy)

    def ours(positive):
        sampler = node_classes["NewBieSampler"]
        out = sampler.execute(model, positive, neg, latent, 7, 2, 4.0, 1.0, 0.0, "newbie_euler", "newbie_official")
        return out.result[0]["samples"]

    def stock(positive):
        noise = comfy.sample.prepare_noise(latent["samples"], 7)
        return comfy.sample.sample(model, noise, 2, 4.0, "euler", "simple", positive, neg, latent["samples"])

    for run in (ours, stock):
        calls.clear()
        base = run(pos)
        assert all(r is None for _, r in calls)
        calls.clear()
        with_regions = run(regional)
        assert calls and all(r is not None for _, r in calls)
        for batch, r in calls:  # cond and uncond in one batch: the uncond half is never masked
            assert len(r.samples) == batch == 2
            assert sum(s is None for s in r.samples) == 1
        assert (with_regions - base).abs().max() > 1e-4
        assert torch.equal(run(full), base)  # full-frame regions are exactly no regions
        assert not torch.equal(run(masked), base)
    # regions attached to the negative too: its (uncond) half of the batch still runs unmasked
    calls.clear()
    sampler = node_classes["NewBieSampler"]
    sampler.execute(model, regional, regional, latent, 7, 1, 4.0, 1.0, 0.0, "newbie_euler", "newbie_official")
    assert calls and all(sum(s is None for s in r.samples) == 1 for _, r in calls)


def test_region_bias_is_built_once_per_sampling_run_not_per_step(node_classes, tiny, comfy, monkeypatch):
    """ComfyUI rebuilds its cond batch every step; the [B, 1, S, S] key bias must still be built only once."""
    import comfy.sample

    model, _pos, neg, regional, latent = _two_characters(node_classes)

    pack_regions = sys.modules[node_classes["NewBieSampler"].__module__.rsplit(".", 2)[0] + ".newbie_core.regions"]
    original = pack_regions.RegionalAttention._build
    builds, seen = [], []

    def counting(self, *args):
        builds.append(args[3])  # the joint sequence length
        return original(self, *args)

    def spy(self, *args, **kwargs):
        seen.append(self)
        return original_bias(self, *args, **kwargs)

    original_bias = pack_regions.RegionalAttention.joint_bias
    monkeypatch.setattr(pack_regions.RegionalAttention, "_build", counting)
    monkeypatch.setattr(pack_regions.RegionalAttention, "joint_bias", spy)

    sampler = node_classes["NewBieSampler"]
    sampler.execute(model, regional, neg, latent, 7, 4, 4.0, 1.0, 0.0, "newbie_euler", "newbie_official")
    assert len(seen) == 4 and len(builds) == 1  # each of the 4 steps asks (one CFG batch); one build
    assert all(r is seen[0] for r in seen)

    builds.clear()
    noise = comfy.sample.prepare_noise(latent["samples"], 7)
    comfy.sample.sample(model, noise, 4, 4.0, "euler", "simple", regional, neg, latent["samples"])
    assert len(builds) == 1  # a new run builds again, once
