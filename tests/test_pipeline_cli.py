"""The standalone pipeline and the command line, on the embedded tiny default."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from newbie_core.cli import main
from newbie_core.errors import ConfigError
from newbie_core.pipeline import GenerationSettings, NewBiePipeline


@pytest.fixture(scope="module")
def pipe():
    return NewBiePipeline.tiny()


def test_tiny_generation_is_deterministic_and_seeded(pipe):
    s = GenerationSettings(prompt="1girl, smile", width=64, height=48, steps=3, seed=5)
    a = pipe.generate(s)
    b = pipe.generate(s)
    assert a.images[0].size == (64, 48)
    assert torch.equal(a.latents, b.latents)
    c = pipe.generate(GenerationSettings(prompt="1girl, smile", width=64, height=48, steps=3, seed=6))
    assert not torch.equal(a.latents, c.latents)


def test_batch_sample_zero_equals_single_run(pipe):
    one = pipe.generate(GenerationSettings(prompt="x", width=32, height=32, steps=2, seed=1))
    two = pipe.generate(GenerationSettings(prompt="x", width=32, height=32, steps=2, seed=1, batch_size=2))
    assert len(two.images) == 2
    assert torch.allclose(two.latents[:1], one.latents, atol=1e-5)


def test_pipeline_sampling_matches_hand_written_cfg_loop(pipe):
    """Euler with CFG everywhere, rebuilt from the public pieces: the pipeline must do exactly this."""
    s = GenerationSettings(
        prompt="a cat",
        negative_prompt="blurry",
        width=32,
        height=32,
        steps=3,
        seed=2,
        solver="euler",
        cfg=3.0,
        cfg_trunc=1.0,
    )
    result = pipe.generate(s)
    enc = pipe.text_encoders.encode(["a cat", "blurry"])
    x = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(2))
    t = torch.linspace(0, 1, 4, dtype=torch.float64)
    t = t / (t + 6 - 6 * t)
    for i in range(3):
        tc = torch.full((1,), float(t[i]))
        vc = pipe.transformer(x, tc, *[v[:1, : int(enc.mask[0].sum())] for v in (enc.hidden, enc.mask)], enc.pooled[:1])
        vu = pipe.transformer(x, tc, *[v[1:, : int(enc.mask[1].sum())] for v in (enc.hidden, enc.mask)], enc.pooled[1:])
        x = x + float(t[i + 1] - t[i]) * (vu + 3.0 * (vc - vu))
    assert torch.allclose(result.latents, x, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(width=100), "width must be a positive multiple of 16, got 100"),
        (dict(steps=0), "steps must be between 1 and 1000, got 0"),
        (dict(solver="rk45"), "solver 'rk45' is not known; choose one of: euler, midpoint, rk4, dpm"),
    ],
)
def test_impossible_settings(pipe, kwargs, message):
    with pytest.raises(ConfigError) as err:
        pipe.generate(GenerationSettings(prompt="x", **kwargs))
    assert str(err.value) == message


def run(argv, stdin=""):
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_generate_writes_png_with_metadata(tmp_path):
    target = tmp_path / "cat.png"
    prompt = "<character_1><n>cat</n><gender>1girl</gender></character_1>"
    code, out, err = run(["generate", "--prompt", prompt, "--seed", "4", "--steps", "2", "--output", str(target)])
    assert code == 0, err
    assert f"wrote {target}" in out
    img = Image.open(target)
    meta = json.loads(img.info["newbie"])
    assert meta["prompt"] == prompt and meta["seed"] == 4 and meta["steps"] == 2
    assert "not NewBie" in meta["model"]
    assert img.info["parameters"].startswith(prompt)
    assert [p.name for p in tmp_path.iterdir()] == ["cat.png"]  # no temp files left behind


def test_cli_rejects_bad_xml_with_position_and_writes_nothing(tmp_path):
    target = tmp_path / "x.png"
    code, _, err = run(["generate", "--prompt", "<character_1>\n<n>a</n>", "--output", str(target)])
    assert code == 2
    assert err.strip() == "error: prompt line 1, column 1: <character_1> is never closed"
    assert not target.exists()


def test_cli_never_overwrites(tmp_path):
    target = tmp_path / "keep.png"
    target.write_bytes(b"precious")
    code, _, err = run(["generate", "--prompt", "x", "--output", str(target)])
    assert code == 2 and "already exists" in err
    assert target.read_bytes() == b"precious"


def test_cli_prompt_file_and_impossible_size(tmp_path):
    pf = tmp_path / "p.xml"
    pf.write_text("<caption>a dog</caption>", encoding="utf-8")
    code, _, err = run(["generate", "--prompt-file", str(pf), "--width", "50", "--output", str(tmp_path / "d.png")])
    assert code == 2
    assert err.strip() == "error: --width must be a positive multiple of 16, got 50"


def test_create_loop_validates_asks_and_never_overwrites(tmp_path):
    script = (
        "\n".join(
            [
                "<character_1>",
                "<n>a</n>",
                "",  # malformed: never closed -> asked again
                "<character_1><n>a</n></character_1>",
                "",  # fixed
                "my pic",
                "2",  # file name, steps
                "1girl, smile",
                "",  # second prompt
                "my pic",
                "",  # same name, default steps
                "quit",
            ]
        )
        + "\n"
    )
    code, out, _ = run(["create", "--output-dir", str(tmp_path), "--steps", "1"], stdin=script)
    assert code == 0
    assert "XML error: line 1, column 1: <character_1> is never closed" in out
    sessions = list(tmp_path.iterdir())
    assert len(sessions) == 1 and len(sessions[0].name) == len("20261123-010203")
    assert sorted(p.name for p in sessions[0].iterdir()) == ["my_pic.png", "my_pic_1.png"]
    assert out.rstrip().endswith("bye")


def test_create_quits_cleanly_on_end_of_input(tmp_path):
    code, out, _ = run(["create", "--output-dir", str(tmp_path)], stdin="")
    assert code == 0 and out.rstrip().endswith("bye")
    assert list(tmp_path.iterdir()) == []


def test_module_entry_point_runs(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "newbie_core", "generate", "--steps", "1", "--output", str(tmp_path / "m.png")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "m.png").is_file()


def test_models_dir_loads_real_format_files(tmp_path):
    """ComfyUI models/ layout with files in the released formats (tiny sizes): found by their keys, then run."""
    from model_files import write_tiny_models

    from newbie_core.pipeline import find_model_files

    models = tmp_path / "models"
    write_tiny_models(models)
    found = find_model_files(models)
    assert {k: p.name for k, p in found.items()} == {
        "transformer": "NewBie-tiny.safetensors",
        "gemma": "gemma_tiny.safetensors",
        "jina": "jina_tiny.safetensors",
        "vae": "ae_tiny.safetensors",
    }
    out = tmp_path / "real.png"
    code, stdout, err = run(
        [
            "generate",
            "--models-dir",
            str(models),
            "--prompt",
            "1girl, smile",
            "--steps",
            "2",
            "--width",
            "32",
            "--height",
            "32",
            "--output",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert code == 0, err
    assert Image.open(out).size == (32, 32)
    assert json.loads(Image.open(out).info["newbie"])["model"] == "NewBie-image-Exp0.1"
    out2 = tmp_path / "low.png"
    code, _, err = run(
        [
            "generate",
            "--models-dir",
            str(models),
            "--prompt",
            "1girl, smile",
            "--steps",
            "2",
            "--low-vram",
            "--width",
            "32",
            "--height",
            "32",
            "--output",
            str(out2),
            "--device",
            "cpu",
        ]
    )
    assert code == 0, err
    assert Image.open(out2).tobytes() == Image.open(out).tobytes()  # offloading changes nothing but memory


def test_models_dir_names_what_is_missing(tmp_path):
    code, _, err = run(["generate", "--models-dir", str(tmp_path), "--output", str(tmp_path / "x.png")])
    assert code == 2
    assert err.strip() == (
        f"error: {tmp_path}: could not find NewBie diffusion model, Gemma3-4B-it text encoder, "
        "Jina CLIP v2 text encoder, FLUX VAE (ae.safetensors). Seen: no weight files"
    )


def tiny_lora(path, scale=0.5):
    from safetensors.torch import save_file

    from newbie_core import tiny

    w = dict(tiny.tiny_transformer().named_parameters())["layers.0.attention.qkv.weight"]
    gen = torch.Generator().manual_seed(3)
    save_file(
        {
            "base_model.model.layers.0.attention.qkv.lora_A.weight": torch.randn(2, w.shape[1], generator=gen) * scale,
            "base_model.model.layers.0.attention.qkv.lora_B.weight": torch.randn(w.shape[0], 2, generator=gen) * scale,
        },
        str(path),
    )
    return path


def test_cli_lora_flag_applies_and_records_each_lora(tmp_path):
    lora = tiny_lora(tmp_path / "style.safetensors")
    base = ["generate", "--prompt", "1girl", "--steps", "2", "--seed", "1"]
    code, _, err = run([*base, "--output", str(tmp_path / "plain.png")])
    assert code == 0, err
    code, out, err = run([*base, "--lora", f"{lora}:0", "--output", str(tmp_path / "zero.png")])
    assert code == 0, err
    assert "style.safetensors: PEFT lora_A/lora_B, base_model.model names; 1 modules applied" in out
    code, _, err = run([*base, "--lora", str(lora), "--lora", f"{lora}:-0.5", "--output", str(tmp_path / "two.png")])
    assert code == 0, err
    plain, zero, two = (Image.open(tmp_path / f"{n}.png") for n in ("plain", "zero", "two"))
    assert zero.tobytes() == plain.tobytes()
    assert two.tobytes() != plain.tobytes()
    assert json.loads(two.info["newbie"])["loras"] == "style.safetensors:1, style.safetensors:-0.5"
    assert "loras" not in json.loads(plain.info["newbie"])


def test_cli_lora_file_is_checked_before_any_model_loads(tmp_path):
    missing = tmp_path / "nope.safetensors"
    code, out, err = run(["generate", "--prompt", "x", "--lora", f"{missing}:0.8", "--output", str(tmp_path / "x.png")])
    assert code == 2
    assert err.strip() == f"error: --lora {missing}:0.8: {missing}: file not found"
    assert out == ""  # nothing was loaded
    assert not (tmp_path / "x.png").exists()
