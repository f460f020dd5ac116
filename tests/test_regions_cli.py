"""Regions end to end on the embedded tiny default: XML <region>, generate --region, metadata, errors."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from newbie_core.cli import main
from newbie_core.errors import ConfigError
from newbie_core.pipeline import GenerationSettings, NewBiePipeline

TWO = """<character_1>
<n>rem_\\(re:zero\\)</n>
<gender>1girl</gender>
</character_1>

<character_2>
<n>b</n>
<gender>1boy</gender>
</character_2>

<general_tags>
<count>1girl, 1boy</count>
</general_tags>"""

WITH_REGION = TWO.replace("<gender>1girl</gender>\n", "<gender>1girl</gender>\n  <region>0,0,500,1000</region>\n")


@pytest.fixture(scope="module")
def pipe():
    return NewBiePipeline.tiny()


def small(**kw):
    return GenerationSettings(**{"width": 32, "height": 32, "steps": 2, "solver": "euler", "seed": 3, **kw})


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def pixels(path):
    return np.asarray(Image.open(path))


def test_xml_region_is_layout_data_not_text(pipe):
    from_xml = pipe.generate(small(prompt=WITH_REGION))
    from_settings = pipe.generate(small(prompt=TWO, regions={"character_1": [0, 0, 500, 1000]}))
    assert torch.equal(from_xml.latents, from_settings.latents)  # the tag was stripped from the encoder text
    assert from_xml.metadata()["regions"] == {"character_1": [0, 0, 500, 1000]}
    # escapes are applied after the region tags go: \( reaches the encoders as ( and the spans follow
    unescaped = pipe.generate(small(prompt=WITH_REGION.replace("\\(", "(").replace("\\)", ")")))
    assert torch.equal(unescaped.latents, from_xml.latents)
    literal = pipe.generate(small(prompt=WITH_REGION, prompt_escapes="literal"))
    assert not torch.equal(literal.latents, from_xml.latents)
    plain = pipe.generate(small(prompt=TWO))
    assert (from_xml.latents - plain.latents).abs().max() > 1e-4
    kept = pipe.generate(small(prompt=WITH_REGION, keep_region_tags=True))
    assert not torch.equal(kept.latents, from_xml.latents)


def test_settings_override_xml_regions(pipe):
    a = pipe.generate(small(prompt=WITH_REGION, regions={"character_1": [500, 0, 1000, 1000]}))
    b = pipe.generate(small(prompt=TWO, regions={"character_1": [500, 0, 1000, 1000]}))
    assert torch.equal(a.latents, b.latents)


def test_full_frame_regions_reproduce_the_region_free_image(pipe):
    full = {"character_1": [0, 0, 1000, 1000], "character_2": [0, 0, 1000, 1000]}
    a = pipe.generate(small(prompt=TWO, regions=full, cfg_trunc=1.0))
    b = pipe.generate(small(prompt=TWO, cfg_trunc=1.0))
    assert torch.equal(a.latents, b.latents)


def test_uncond_half_of_cfg_is_never_masked(pipe, monkeypatch):
    calls = []
    dit = pipe.transformer
    original = type(dit).forward

    def spy(self, x, t, cap, mask, pooled, regions=None, **kw):
        calls.append((x.shape[0], regions))
        return original(self, x, t, cap, mask, pooled, regions=regions, **kw)

    monkeypatch.setattr(type(dit), "forward", spy)
    pipe.generate(small(prompt=WITH_REGION, cfg_trunc=0.1, steps=4, batch_size=2))
    with_uncond = [r for n, r in calls if n == 4]
    cond_only = [r for n, r in calls if n == 2]
    assert with_uncond and cond_only
    for r in with_uncond:
        assert all(s is not None for s in r.samples[:2]) and r.samples[2:] == [None, None]
    assert all(len(r) == 2 and None not in r.samples for r in cond_only)


def test_regions_apply_only_until(pipe, monkeypatch):
    seen = []
    dit = pipe.transformer
    original = type(dit).forward

    def spy(self, x, t, cap, mask, pooled, regions=None, **kw):
        seen.append((float(t[0]), regions is not None))
        return original(self, x, t, cap, mask, pooled, regions=regions, **kw)

    monkeypatch.setattr(type(dit), "forward", spy)
    pipe.generate(small(prompt=WITH_REGION, region_until=0.3, steps=4))
    assert seen and all(active == (t < 0.3) for t, active in seen)
    assert any(a for _, a in seen) and not all(a for _, a in seen)


def test_region_for_a_character_cut_by_the_token_limit(pipe, monkeypatch):
    monkeypatch.setattr(pipe.text_encoders, "gemma_max_tokens", 140)
    with pytest.raises(ConfigError, match="character_2 has a region but its block was cut off by the 140-token"):
        pipe.generate(small(prompt=TWO, regions={"character_2": [0, 0, 500, 500]}))


def test_cli_region_is_deterministic_recorded_and_full_frame_is_a_no_op(tmp_path):
    prompt = tmp_path / "p.xml"
    prompt.write_text(TWO, encoding="utf-8")
    base = ["generate", "--prompt-file", str(prompt), "--steps", "2", "--solver", "euler", "--cfg-trunc", "1"]
    base += ["--width", "32", "--height", "32"]
    region = ["--region", "character_1=0,0,400,1000", "--region", "character_2=600,0,1000,1000"]  # 2x2 token grid
    paths = {name: tmp_path / f"{name}.png" for name in ("r1", "r2", "none", "full")}
    assert run(base + region + ["--output", str(paths["r1"])])[0] == 0
    assert run(base + region + ["--output", str(paths["r2"])])[0] == 0
    assert run(base + ["--output", str(paths["none"])])[0] == 0
    full = ["--region", "character_1=0,0,1000,1000", "--region", "character_2=0,0,1000,1000"]
    assert run(base + full + ["--output", str(paths["full"])])[0] == 0
    assert np.array_equal(pixels(paths["r1"]), pixels(paths["r2"]))
    assert not np.array_equal(pixels(paths["r1"]), pixels(paths["none"]))
    assert np.array_equal(pixels(paths["full"]), pixels(paths["none"]))
    meta = json.loads(Image.open(paths["r1"]).info["newbie"])
    assert meta["regions"] == {"character_1": [0, 0, 400, 1000], "character_2": [600, 0, 1000, 1000]}
    assert meta["region_outside"] == "shared" and meta["region_layers"] == "all"
    assert json.loads(Image.open(paths["none"]).info["newbie"])["regions"] is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["--region", "character_3=0,0,10,10"], "error: --region character_3=0,0,10,10: the prompt has no "
         "<character_3> (it has character_1, character_2)"),
        (["--region", "character_1=0,0,1001,10"], "error: --region character_1=0,0,1001,10: region x1=1001 is "
         "outside 0-1000"),
        (["--region", "character_1=0,50,10,20"], "error: --region character_1=0,50,10,20: region is empty or "
         "inverted: y1 (20) must be greater than y0 (50)"),
        (["--region", "character_1=1,2,3"], 'error: --region character_1=1,2,3: region needs four numbers '
         'x0,y0,x1,y1 from 0 to 1000, got "1,2,3"'),
        (["--region", "girl=1,2,3,4"], 'error: --region girl=1,2,3,4: region "girl" is not a character name; '
         "use character_1, character_2, ..."),
        (["--region", "character_1=0,0,5,5", "--region", "character_1=0,0,9,9"],
         "error: --region character_1=0,0,9,9: character_1 is given twice"),
        (["--region-soft-edge", "2000"], "error: --region-soft-edge must be between 0 and 1000, got 2000"),
        (["--region-layers", "5-2"], 'error: --region-layers: layers "5-2" must be layer numbers or ranges such as '
         "0-11,20 (or all)"),
    ],
)  # fmt: skip
def test_cli_bad_regions_fail_before_any_model_loads_and_write_nothing(tmp_path, args, message):
    prompt = tmp_path / "p.xml"
    prompt.write_text(TWO, encoding="utf-8")
    out = tmp_path / "x.png"
    code, stdout, stderr = run(["generate", "--prompt-file", str(prompt), "--output", str(out), *args])
    assert code == 2
    assert stderr.strip() == message
    assert "model" not in stdout  # nothing was loaded
    assert list(tmp_path.iterdir()) == [prompt]


def test_cli_bad_xml_region_is_positioned(tmp_path):
    prompt = tmp_path / "p.xml"
    prompt.write_text(WITH_REGION.replace("0,0,500,1000", "0,0,500"), encoding="utf-8")
    code, _, stderr = run(["generate", "--prompt-file", str(prompt), "--output", str(tmp_path / "x.png")])
    assert code == 2
    assert stderr.strip() == (
        f"error: prompt file {prompt} line 4, column 11: <region> of <character_1> needs four numbers x0,y0,x1,y1 "
        'from 0 to 1000, got "0,0,500"'
    )
    assert not (tmp_path / "x.png").exists()


def test_tokenizers_without_offsets_still_run_region_free_prompts(pipe, monkeypatch):
    tok = pipe.text_encoders.gemma_tokenizer

    def no_offsets(text):
        raise NotImplementedError("this tokenizer cannot report token offsets")

    monkeypatch.setattr(tok, "encode_plain_offsets", no_offsets)
    assert pipe.generate(small(prompt=TWO, steps=1)).images
    with pytest.raises(ConfigError, match="prompt: regions need token offsets: this tokenizer cannot report"):
        pipe.generate(small(prompt=WITH_REGION, steps=1))


def test_region_layers_reach_the_model(pipe):
    assert small(prompt=TWO, region_layers="1, 0").region_settings().layers == (0, 1)
    one = pipe.generate(small(prompt=WITH_REGION, region_layers="0"))
    every = pipe.generate(small(prompt=WITH_REGION, region_layers="all"))
    plain = pipe.generate(small(prompt=TWO))
    assert not torch.equal(one.latents, every.latents) and not torch.equal(one.latents, plain.latents)


def test_regions_work_with_the_step_cache(pipe):
    ref = pipe.generate(small(prompt=WITH_REGION, steps=3))
    assert torch.equal(pipe.generate(small(prompt=WITH_REGION, steps=3, step_cache=0.0)).latents, ref.latents)
    cached = pipe.generate(small(prompt=WITH_REGION, steps=3, step_cache=0.5))
    assert torch.isfinite(cached.latents).all()


def test_batch_items_with_different_regions_each_equal_their_single_run(pipe):
    """One batched forward over items whose XML places character_1 differently: each item's latent is the one its
    own single run gives (its own layout and spans), and the two layouts really differ."""
    left = small(prompt=WITH_REGION)
    right = small(prompt=WITH_REGION.replace("0,0,500,1000", "500,0,1000,1000"))
    plain = small(prompt=TWO)
    batch = pipe.generate(left, items=[left, right, plain])
    singles = [pipe.generate(s).latents for s in (left, right, plain)]
    for i, one in enumerate(singles):
        assert torch.allclose(batch.latents[i : i + 1], one, atol=1e-5, rtol=0), i
    assert not torch.allclose(singles[0], singles[1], atol=1e-4)
    assert not torch.allclose(singles[0], singles[2], atol=1e-4)
