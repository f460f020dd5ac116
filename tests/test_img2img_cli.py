"""The CLI's image flags and --from-png on the embedded tiny default; runs read back from PNGs."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from newbie_core import cli, png_runs
from newbie_core.cli import main
from newbie_core.errors import ConfigError
from newbie_core.pipeline import GenerationSettings

FAST = ["--steps", "2", "--width", "32", "--height", "32"]


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdin=io.StringIO(""), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture()
def init_png(tmp_path):
    arr = (np.arange(32 * 32 * 3).reshape(32, 32, 3) * 7 % 251).astype(np.uint8)
    path = tmp_path / "init.png"
    Image.fromarray(arr).save(path)
    return path


def meta(path):
    return json.loads(Image.open(path).info["newbie"])


def test_from_png_reproduces_the_run_bit_exactly_and_flags_override(tmp_path, init_png):
    first = tmp_path / "first.png"
    argv = ["generate", "--prompt", "1girl, smile", "--seed", "9", "--cfg", "3.5", "--solver", "euler", *FAST]
    argv += ["--init-image", str(init_png), "--strength", "0.7", "--output", str(first)]
    code, _, err = run(argv)
    assert code == 0, err
    again = tmp_path / "again.png"
    code, _, err = run(["generate", "--from-png", str(first), "--output", str(again)])
    assert code == 0, err
    assert Image.open(again).tobytes() == Image.open(first).tobytes()
    assert meta(again) == meta(first)
    other = tmp_path / "other.png"
    code, _, err = run(["generate", "--from-png", str(first), "--seed", "10", "--output", str(other)])
    assert code == 0, err
    assert meta(other) == {**meta(first), "seed": 10}
    assert Image.open(other).tobytes() != Image.open(first).tobytes()


def test_every_setting_lands_in_the_png_metadata(tmp_path, init_png):
    mask = tmp_path / "mask.png"
    Image.new("L", (32, 32), 255).save(mask)
    out = tmp_path / "inpaint.png"
    argv = ["generate", "--prompt", "x", *FAST, "--init-image", str(init_png), "--mask", str(mask)]
    code, _, err = run([*argv, "--mask-feather", "6", "--output", str(out)])
    assert code == 0, err
    m = meta(out)
    assert set(m) == {"model"} | {f.name for f in dataclasses.fields(GenerationSettings)}
    assert (m["init_image"], m["mask"], m["mask_feather"], m["strength"]) == (str(init_png), str(mask), 6, None)
    assert len(m["init_image_sha256"]) == 64


def test_hires_scale_two_doubles_the_size(tmp_path):
    out = tmp_path / "hires.png"
    code, _, err = run(
        ["generate", "--prompt", "x", *FAST, "--hires-scale", "2", "--hires-steps", "1", "--output", str(out)]
    )
    assert code == 0, err
    assert Image.open(out).size == (64, 64)
    assert meta(out)["hires_scale"] == 2.0 and meta(out)["width"] == 32


def test_init_image_size_is_the_default_size(tmp_path):
    odd = tmp_path / "odd.png"
    Image.new("RGB", (40, 36), (200, 10, 10)).save(odd)
    out = tmp_path / "o.png"
    code, _, err = run(["generate", "--prompt", "x", "--steps", "1", "--init-image", str(odd), "--output", str(out)])
    assert code == 0, err
    assert f"warning: --init-image {odd} is 40x36; resized to 32x32" in err
    assert Image.open(out).size == (32, 32)


def _bad_inputs(tmp_path, init_png):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG but not really")
    small = tmp_path / "small.png"
    Image.new("L", (16, 16)).save(small)
    plain = tmp_path / "plain.png"
    Image.new("RGB", (16, 16)).save(plain)
    return [
        (["--init-image", str(tmp_path / "gone.png")], f"error: --init-image {tmp_path / 'gone.png'}: file not found"),
        (["--init-image", str(junk)], f"error: --init-image {junk}: cannot read it as an image"),
        (
            ["--init-image", str(init_png), "--mask", str(small)],
            f"error: --mask {small} is 16x16 but --init-image {init_png} is 32x32; they must be the same size",
        ),
        (["--init-image", str(init_png), "--strength", "1.5"], "error: --strength must be between 0 and 1, got 1.5"),
        (["--init-image", str(init_png), "--strength", "-1"], "error: --strength must be between 0 and 1, got -1"),
        (["--mask", str(small)], "error: --mask needs an init image to repaint; give --init-image"),
        (["--strength", "0.5"], "error: --strength applies to an init image; give --init-image (or leave it unset)"),
        (["--hires-scale", "9"], "error: --hires-scale must be between 1 and 4, got 9"),
        (
            ["--from-png", str(plain)],
            f"error: --from-png {plain}: no NewBie metadata in this PNG (it was not written by python -m newbie_core)",
        ),
        (["--from-png", str(tmp_path / "nope.png")], f"error: --from-png {tmp_path / 'nope.png'}: file not found"),
    ]


def test_bad_image_input_fails_before_any_model_loads_and_writes_nothing(tmp_path, init_png, monkeypatch):
    def no_loading(*_a, **_k):
        raise AssertionError("a model was loaded for bad input")

    monkeypatch.setattr(cli, "_load_pipeline", no_loading)
    for flags, message in _bad_inputs(tmp_path, init_png):
        before = sorted(p.name for p in tmp_path.iterdir())
        out = tmp_path / "out.png"
        code, _, err = run(["generate", "--prompt", "x", "--steps", "1", *flags, "--output", str(out)])
        assert code == 2, (flags, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), (flags, err)
        assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_explicit_flags_are_the_typed_ones_even_abbreviated():
    given = cli._explicit_flags(["generate", "--from-png", "a.png", "--see", "3", "--cfg=2", "--prompt", "x"])
    assert given == {"from_png", "seed", "cfg", "prompt"}


def _comfy_png(path, graph):
    info = PngInfo()
    info.add_text("prompt", json.dumps(graph))
    info.add_text("workflow", "{}")
    Image.new("RGB", (48, 32)).save(path, pnginfo=info)


def test_reads_a_comfyui_png_whose_graph_used_our_nodes(tmp_path):
    graph = {
        "3": {
            "class_type": "NewBieSampler",
            "inputs": {
                "model": ["1", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "seed": 1234,
                "steps": 20,
                "cfg": 4.5,
                "cfg_trunc": 0.3,
                "renorm": 1.0,
                "sampler_name": "newbie_midpoint",
                "scheduler": "newbie_official",
                "denoise": 1.0,
            },
        },
        "5": {"class_type": "NewBieEmptyLatent", "inputs": {"resolution": "832x1216 (2:3)", "width": 1, "height": 1}},
        "6": {
            "class_type": "NewBieTextEncode",
            "inputs": {"clip": ["2", 0], "text": ["8", 0], "system_prompt": "auto"},
        },
        "7": {
            "class_type": "NewBieTextEncode",
            "inputs": {"clip": ["2", 0], "text": "lowres", "system_prompt": "auto"},
        },
        "8": {"class_type": "NewBieXMLPrompt", "inputs": {"text": "<character_1><n>a</n></character_1>"}},
    }
    path = tmp_path / "comfy.png"
    _comfy_png(path, graph)
    r = png_runs.read_run(path)
    assert (r.prompt, r.negative_prompt, r.seed, r.steps, r.cfg, r.cfg_trunc, r.renorm, r.width, r.height) == (
        "<character_1><n>a</n></character_1>",
        "lowres",
        1234,
        20,
        4.5,
        0.3,
        1.0,
        832,
        1216,
    )
    graph["5"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["9", 0], "vae": ["4", 0]}}
    _comfy_png(path, graph)
    assert (png_runs.read_run(path).width, png_runs.read_run(path).height) == (48, 32)  # img2img: the image's size
    del graph["3"]
    _comfy_png(path, graph)
    with pytest.raises(ConfigError, match="its ComfyUI workflow has no NewBie Sampler node"):
        png_runs.read_run(path)


def test_reads_a_cli_png(tmp_path):
    out = tmp_path / "cli.png"
    code, _, err = run(["generate", "--prompt", "<caption>a dog</caption>", "--seed", "5", *FAST, "--output", str(out)])
    assert code == 0, err
    r = png_runs.read_run(out)
    assert (r.prompt, r.seed, r.steps, r.width, r.height, r.cfg) == ("<caption>a dog</caption>", 5, 2, 32, 32, 5.0)


def test_from_png_says_when_the_loras_differ(tmp_path):
    first = tmp_path / "first.png"
    code, _, err = run(["generate", "--prompt", "x", *FAST, "--output", str(first)])
    assert code == 0, err
    m = {**meta(first), "loras": "style.safetensors:0.8"}
    info = PngInfo()
    info.add_itxt("newbie", json.dumps(m))
    tagged = tmp_path / "tagged.png"
    Image.open(first).save(tagged, pnginfo=info)
    code, _, err = run(["generate", "--from-png", str(tagged), "--output", str(tmp_path / "again.png")])
    assert code == 0, err
    assert (
        f"warning: --from-png {tagged} was made with LoRAs [style.safetensors:0.8], this run applies [] "
        "(give the same files with --lora to reproduce it)"
    ) in err
    assert "ignoring settings" not in err
