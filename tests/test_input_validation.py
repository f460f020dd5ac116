"""Bad input is refused before any model loads, with one exact line, the documented exit code and nothing written."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from newbie_core import cli, image_files, sampling, validation
from newbie_core.defaults import OFFICIAL, TINY_SIZE
from newbie_core.errors import ConfigError
from newbie_core.pipeline import GenerationSettings, NewBiePipeline


def run(argv, stdin=""):
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(argv, stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def tree(root: Path) -> list[str]:
    """Every file and folder under ``root``, relative, sorted (hidden temp files included)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def no_loading(monkeypatch):
    """Any model load fails the test: these mistakes must be caught before."""

    def refuse(*_a, **_k):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(cli, "_load_pipeline", refuse)
    monkeypatch.setattr(NewBiePipeline, "from_models_dir", refuse)


USABLE = ", ".join(validation.usable_devices())
SEED_MAX = 2**64 - 1


def refused_cases(tmp: Path):
    (tmp / "afile").write_bytes(b"x")
    (tmp / "latin1.txt").write_bytes(b"caf\xe9")
    out = str(tmp / "out.png")
    cases = [
        (["--cfg", "nan"], "error: --cfg must be a finite number, got nan"),
        (["--cfg", "inf"], "error: --cfg must be a finite number, got inf"),
        (["--cfg", "150"], "error: --cfg must be between 0 and 100, got 150"),
        (["--shift", "nan"], "error: --shift must be a finite number, got nan"),
        (["--cfg-trunc", "nan"], "error: --cfg-trunc must be a finite number, got nan"),
        (["--renorm", "-1"], "error: --renorm must be between 0 and 10, got -1"),
        (["--steps", "0"], "error: --steps must be between 1 and 1000, got 0"),
        (["--width", "0"], "error: --width must be a positive multiple of 16, got 0"),
        (["--height", "1000"], "error: --height must be a positive multiple of 16, got 1000"),
        (
            ["--width", "100000"],
            "error: --width must be at most 4096, got 100000 (--allow-large raises the limit to 16384)",
        ),
        (["--width", "32000", "--allow-large"], "error: --width must be at most 16384, got 32000"),
        (["--seed", "-1"], f"error: --seed must be from 0 to 2^64-1 ({SEED_MAX}), got -1"),
        (["--seed", str(2**64)], f"error: --seed must be from 0 to 2^64-1 ({SEED_MAX}), got {2**64}"),
        (
            ["--seed", "abc"],
            "error: argument --seed: invalid int value: 'abc' (see python -m newbie_core generate --help)",
        ),
        (["--device", "tpu"], f"error: --device 'tpu' is not a device name; this torch can use: {USABLE}"),
        (["--device", "meta"], f"error: --device 'meta' cannot run NewBie; this torch can use: {USABLE}"),
        (
            ["--dtype", "fp64"],
            "error: --dtype: unknown dtype 'fp64'; choose one of: default, bf16, fp16, fp32, fp8_e4m3fn, fp8_e5m2",
        ),
        (
            ["--negative", "<character_1>"],
            "error: --negative line 1, column 1: <character_1> is never closed",
        ),
        (["--models-dir", str(tmp / "nope")], f"error: --models-dir {tmp / 'nope'}: no such folder"),
        (["--prompt-file", str(tmp / "nope.txt")], f"error: --prompt-file {tmp / 'nope.txt'}: no such file"),
        (
            ["--prompt-file", str(tmp / "latin1.txt")],
            f"error: --prompt-file {tmp / 'latin1.txt'}: not UTF-8 text (byte 0xe9 at offset 3)",
        ),
    ]
    cases = [(argv + ["--output", out], msg) for argv, msg in cases]
    for name, why in (("x.gif", "extension '.gif' is not an image format"), ("noext", "no extension")):
        cases.append(
            (
                ["--output", str(tmp / name)],
                f"error: --output {tmp / name}: {why}; end the name with .png, .jpg, .jpeg or .webp "
                "(or with / to write into a folder)",
            )
        )
    cases.append(
        (
            ["--output", str(tmp / "afile" / "sub" / "x.png")],
            f"error: --output: cannot create folder {tmp / 'afile' / 'sub'}: {tmp / 'afile'} is a file",
        )
    )
    if not torch.cuda.is_available():
        cases.append(
            (
                ["--device", "cuda", "--output", out],
                f"error: --device 'cuda' is not available (torch {torch.__version__} has no usable CUDA device); "
                f"this torch can use: {USABLE}",
            )
        )
    return cases


def test_mistakes_are_refused_before_loading_with_one_exact_line(tmp_path, no_loading):
    work = tmp_path / "work"
    work.mkdir()
    for argv, message in refused_cases(work):
        before = tree(work)
        prompt = [] if "--prompt-file" in argv else ["--prompt", "1girl"]
        code, out, err = run(["generate", *prompt, *argv])
        assert (code, err, out) == (2, message + "\n", ""), argv
        assert tree(work) == before, argv  # nothing written


def test_create_refuses_bad_flags_before_the_first_question(tmp_path, no_loading):
    (tmp_path / "f").write_bytes(b"")
    code, out, err = run(["create", "--output-dir", str(tmp_path / "f" / "x")], stdin="1girl\n\nname\n1\n")
    assert (code, out) == (2, "")
    assert err == f"error: --output-dir: cannot create folder {tmp_path / 'f' / 'x'}: {tmp_path / 'f'} is a file\n"
    code, out, err = run(["create", "--output-dir", str(tmp_path), "--cfg", "nan"], stdin="1girl\n\n")
    assert (code, out, err) == (2, "", "error: --cfg must be a finite number, got nan\n")
    assert tree(tmp_path) == ["f"]


def test_unwritable_output_folder_is_refused_before_loading(tmp_path, no_loading, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode))
    code, _, err = run(["generate", "--output", str(tmp_path / "x.png")])
    assert (code, err) == (2, f"error: --output: folder {tmp_path} is not writable\n")
    assert tree(tmp_path) == []


def test_pipeline_settings_name_the_field():
    cases = [
        (dict(cfg=math.nan), "cfg must be a finite number, got nan"),
        (dict(cfg_trunc=math.inf), "cfg_trunc must be a finite number, got inf"),
        (dict(shift=0.0), "shift must be between 0.01 and 100, got 0"),
        (dict(steps=2.5), "steps must be a whole number, got 2.5"),
        (dict(seed=2**64), f"seed must be from 0 to 2^64-1 ({SEED_MAX}), got {2**64}"),
        (dict(width=8192), "width must be at most 4096, got 8192 (allow_large raises the limit to 16384)"),
        (
            dict(system_prompt="xmll"),
            "system_prompt 'xmll' is not known; choose one of: auto, xml, tags, negative, none, custom",
        ),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError) as err:
            GenerationSettings(prompt="x", **kwargs).validate()
        assert str(err.value) == message
    GenerationSettings(prompt="x", width=8192, height=64, allow_large=True).validate()


def test_strength_check_for_other_features():
    assert validation.strength("--strength", 0.5) == 0.5
    with pytest.raises(ConfigError, match=r"^--strength must be between 0 and 1, got 1.5$"):
        validation.strength("--strength", 1.5)
    with pytest.raises(ConfigError, match=r"^--strength must be a finite number, got nan$"):
        validation.strength("--strength", math.nan)


def test_pipeline_checks_device_before_opening_the_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"^device 'tpu' is not a device name"):
        NewBiePipeline.from_models_dir(tmp_path / "does-not-exist", device="tpu")


# ------------------------------------------------------------------------------ seeds


def test_seeds_do_not_alias_and_small_seeds_keep_torch_noise():
    five = sampling.initial_noise(1, 32, 32, 5)
    assert torch.equal(five, torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(5)))
    high = sampling.initial_noise(1, 32, 32, 5 + 2**32)
    assert not torch.equal(five, high)
    assert abs(float((five * high).mean())) < 0.5  # not a copy, not a scaled copy
    top = sampling.initial_noise(2, 32, 32, 2**64 - 1)
    assert not torch.equal(top[:1], sampling.initial_noise(1, 32, 32, 2**64 - 2))
    assert torch.equal(top[:1], sampling.initial_noise(1, 32, 32, 2**64 - 1))  # batch prefix property
    assert abs(float(high.std()) - 1) < 0.3
    with pytest.raises(ConfigError):
        sampling.initial_noise(1, 32, 32, 2**64)


def test_cli_records_the_seed_it_used(tmp_path):
    paths = {}
    for seed in (5, 5 + 2**32):
        paths[seed] = tmp_path / f"s{seed}.png"
        code, _, err = run(["generate", "--prompt", "x", "--steps", "1", "--width", "32", "--height", "32",
                            "--seed", str(seed), "--output", str(paths[seed])])  # fmt: skip
        assert code == 0, err
        assert json.loads(Image.open(paths[seed]).info["newbie"])["seed"] == seed
    assert Image.open(paths[5]).tobytes() != Image.open(paths[5 + 2**32]).tobytes()


# ------------------------------------------------------------------------------ output paths and formats


def gen(tmp_path, *argv):
    prompt = [] if "--prompt" in argv or "--prompt-file" in argv else ["--prompt", "1girl, smile"]
    return run(["generate", *prompt, "--steps", "1", "--width", "32", "--height", "32", *argv])


def test_trailing_slash_and_existing_folder_mean_write_into_it(tmp_path):
    code, out, err = gen(tmp_path, "--output", f"{tmp_path / 'new'}/", "--seed", "3")
    assert code == 0, err
    (name,) = os.listdir(tmp_path / "new")
    assert name.startswith("newbie_") and name.endswith("_3.png")
    assert out.strip().endswith(f"wrote {tmp_path / 'new' / name}")
    code, _, err = gen(tmp_path, "--output", str(tmp_path / "new"), "--seed", "4")
    assert code == 0, err
    assert len(os.listdir(tmp_path / "new")) == 2
    assert tree(tmp_path) == sorted(["new", *(f"new/{n}" for n in os.listdir(tmp_path / "new"))])


def test_tilde_is_expanded(tmp_path, monkeypatch):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    code, _, err = gen(tmp_path, "--output=~/x.png")
    assert code == 0, err
    assert tree(tmp_path) == ["cwd", "home", "home/x.png"]


def test_extension_chooses_format_and_metadata_survives(tmp_path):
    prompt = "1girl, smile, 猫"
    for ext, fmt in ((".png", "PNG"), (".jpg", "JPEG"), (".jpeg", "JPEG"), (".webp", "WEBP")):
        target = tmp_path / f"img{ext}"
        code, _, err = run(["generate", "--prompt", prompt, "--steps", "1", "--width", "32", "--height", "32",
                            "--seed", "7", "--output", str(target)])  # fmt: skip
        assert code == 0, err
        img = Image.open(target)
        assert img.format == fmt and img.size == (32, 32)
        if fmt == "PNG":
            params, settings = img.info["parameters"], json.loads(img.info["newbie"])
        else:
            comment = img.getexif().get_ifd(image_files.EXIF_IFD)[image_files.USER_COMMENT]
            params = image_files.read_user_comment(comment)
            xmp = img.info["xmp"]
            xmp = xmp.decode("utf-8") if isinstance(xmp, bytes) else xmp
            from xml.sax.saxutils import unescape

            settings = json.loads(unescape(xmp.split("<newbie:settings>")[1].split("</newbie:settings>")[0]))
            assert unescape(xmp.split("<newbie:parameters>")[1].split("</newbie:parameters>")[0]) == params
        assert params.startswith(prompt + "\nNegative prompt: \n")
        assert settings["prompt"] == prompt and settings["seed"] == 7
    assert tree(tmp_path) == ["img.jpeg", "img.jpg", "img.png", "img.webp"]


def test_write_failure_is_one_line_exit_1_and_leaves_nothing(tmp_path, monkeypatch):
    def fail(path, data):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(image_files, "_write_new", fail)
    code, _, err = gen(tmp_path, "--output", str(tmp_path / "x.png"))
    assert (code, err.splitlines()[-1]) == (1, f"error: cannot write {tmp_path / 'x.png'}: Permission denied")
    assert "Traceback" not in err and ".part" not in err
    assert tree(tmp_path) == []


def test_unexpected_failures_are_one_line_unless_debug(tmp_path, monkeypatch):
    def boom(self, settings, progress=None):
        raise RuntimeError("CUDA out of memory\nsecond line")

    monkeypatch.setattr(NewBiePipeline, "generate", boom)
    code, _, err = gen(tmp_path, "--output", str(tmp_path / "x.png"))
    assert (code, err) == (1, "error: RuntimeError: CUDA out of memory (run with --debug for the traceback)\n")
    code, _, err = gen(tmp_path, "--output", str(tmp_path / "x.png"), "--debug")
    assert code == 1 and err.startswith("Traceback") and err.endswith("error: RuntimeError: CUDA out of memory\n")
    assert tree(tmp_path) == []


def test_temp_file_is_removed_when_the_write_fails_midway(tmp_path, monkeypatch):
    real_link = os.link

    def link_fails(src, dst):
        assert Path(src).is_file() and Path(src).name.startswith(".newbie-")  # the temp file exists here
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "link", link_fails)
    monkeypatch.setattr(os, "rename", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    code, _, err = gen(tmp_path, "--output", str(tmp_path / "x.png"))
    monkeypatch.setattr(os, "link", real_link)
    assert (code, err.splitlines()[-1]) == (1, f"error: cannot write {tmp_path / 'x.png'}: No space left on device")
    assert tree(tmp_path) == []


# ------------------------------------------------------------------------------ prompts


def test_empty_prompt_warns_and_bom_is_stripped(tmp_path):
    code, _, err = gen(tmp_path, "--prompt", "", "--output", str(tmp_path / "e.png"))
    assert code == 0
    assert "warning: prompt is empty: the image is not guided by any text\n" in err
    pf = tmp_path / "p.txt"
    pf.write_bytes("\ufeff<caption>a dog</caption>".encode())
    code, _, err = gen(tmp_path, "--prompt-file", str(pf), "--output", str(tmp_path / "b.png"))
    assert code == 0, err
    assert json.loads(Image.open(tmp_path / "b.png").info["newbie"])["prompt"] == "<caption>a dog</caption>"


def test_prose_with_angle_brackets_is_plain_text_with_a_warning(tmp_path):
    from newbie_core.text.conditioning import SYSTEM_PROMPTS, system_prompt_for
    from newbie_core.xml_prompt import XMLPromptError, parse

    prose = "a girl says <hello> to a cat<br>sunset"
    p = parse(prose)
    assert p.plain == prose and not p.is_xml
    assert [str(w) for w in p.warnings] == [
        "line 1, column 13: <hello> is not a NewBie tag and no tag is closed, so the prompt is read as plain text"
    ]
    assert system_prompt_for(prose) == SYSTEM_PROMPTS["tags"]
    with pytest.raises(XMLPromptError, match="stray text 'text' outside any tag"):
        parse("<b>bold</b> text")  # something is closed: meant as XML, so checked as XML
    code, _, err = gen(tmp_path, "--prompt", prose, "--output", str(tmp_path / "p.png"))
    assert code == 0, err
    assert err.startswith("warning: prompt line 1, column 13: <hello> is not a NewBie tag")
    assert json.loads(Image.open(tmp_path / "p.png").info["newbie"])["prompt"] == prose
    code, _, err = gen(tmp_path, "--prompt", "<caption>say <hello></caption>", "--output", str(tmp_path / "q.png"))
    assert (code, err) == (
        2,
        "error: prompt line 1, column 21: </caption> closes <hello>, which was opened at line 1, column 14\n",
    )
    assert tree(tmp_path) == ["p.png"]


# ------------------------------------------------------------------------------ defaults, help, dtypes


def test_help_shows_defaults_sizes_and_dtypes():
    from newbie_core.dtypes import dtype_names

    code, out, _ = run(["generate", "--help"])
    assert code == 0
    text = " ".join(out.split())
    assert f"(default: {OFFICIAL.steps};" in text and f"(default: {OFFICIAL.cfg:g})" in text
    assert f"(default: {OFFICIAL.cfg_trunc:g})" in text and f"(default: {OFFICIAL.shift:g})" in text
    assert f"{TINY_SIZE}x{TINY_SIZE} by default" in text and f"{TINY_SIZE} for the embedded tiny model" in text
    for name in dtype_names():
        assert f"  {name:<11} GPU: " in out and f"{'':<11} CPU: " in out
    assert "fp32        GPU: full precision" in out and "CPU: full precision (CPU default)" in out


def test_one_source_for_defaults():
    parser = cli.build_parser()
    args = parser.parse_args(["generate"])
    s = GenerationSettings(prompt="x")
    for name in ("steps", "cfg", "cfg_trunc", "renorm", "shift", "solver", "seed"):
        assert getattr(args, name) == getattr(s, name) == getattr(OFFICIAL, name), name
    assert (s.width, s.height) == (OFFICIAL.width, OFFICIAL.height) == (1024, 1024)
    assert cli._settings(args, "x", tiny=True).width == TINY_SIZE == 64
    assert (OFFICIAL.steps, OFFICIAL.cfg, OFFICIAL.cfg_trunc, OFFICIAL.renorm, OFFICIAL.shift) == (17, 5, 0.25, 0, 6)


def test_vae_dtype_policy(monkeypatch):
    from newbie_core import dtypes

    monkeypatch.setattr(dtypes, "cpu_has_fast_bf16", lambda: False)
    assert dtypes.vae_dtype(torch.bfloat16, "cpu") == torch.float32
    assert dtypes.vae_dtype(torch.float16, "cpu") == torch.float32
    assert dtypes.vae_dtype(torch.bfloat16, "cuda") == torch.bfloat16
    assert dtypes.vae_dtype(torch.float16, "cuda") == torch.float32
    assert dtypes.vae_dtype(dtypes.parse_dtype("fp8_e4m3fn"), "cuda") == torch.bfloat16
    monkeypatch.setattr(dtypes, "cpu_has_fast_bf16", lambda: True)
    assert dtypes.vae_dtype(torch.bfloat16, "cpu") == torch.bfloat16
    assert dtypes.vae_dtype(torch.float32, "cpu") == torch.float32


def test_readme_example_expands_home(tmp_path, monkeypatch):
    from model_files import write_tiny_models

    write_tiny_models(tmp_path / "ComfyUI" / "models")
    monkeypatch.setenv("HOME", str(tmp_path))
    pipe = NewBiePipeline.from_models_dir("~/ComfyUI/models", device="cpu", dtype="bf16")
    assert pipe.vae.dtype == (
        torch.bfloat16 if __import__("newbie_core.dtypes").dtypes.cpu_has_fast_bf16() else torch.float32
    )
    image = pipe.generate(GenerationSettings(prompt="1girl, smile", seed=1, width=32, height=32, steps=1)).images[0]
    assert image.size == (32, 32)
