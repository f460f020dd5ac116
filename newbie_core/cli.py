"""Command line: ``python -m newbie_core generate`` (one image) and ``python -m newbie_core create`` (interactive).

Without ``--models-dir`` both run the embedded tiny smoke-test model, so they work on a fresh
machine with no downloads; with it they load the real NewBie files.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from .errors import NewBieError
from .layout import RegionError
from .solvers import SOLVERS
from .xml_prompt import XMLPromptError, parse

EXIT_BAD_INPUT = 2


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--models-dir", help="ComfyUI models/ folder or the official HF folder; omit for the tiny smoke-test model"
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument(
        "--dtype", default=None, help="weight dtype for real models: bf16, fp16 or fp32 (default: bf16 on GPU)"
    )
    p.add_argument(
        "--low-vram",
        action="store_true",
        help="keep the text encoders in CPU memory except while encoding (about 9 GB less on the GPU)",
    )


def _cache_threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, not {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1 (0 = off), not {text}")
    return value


def _add_speed_args(p: argparse.ArgumentParser) -> None:
    """Memory profile, compile and step cache (issue 9); all off by default."""
    from .memory import PROFILES

    p.add_argument(
        "--vram",
        type=int,
        choices=sorted(PROFILES),
        default=None,
        help="GPU memory profile in GB: "
        + "; ".join(f"{k}: {v.summary}" for k, v in sorted(PROFILES.items(), reverse=True)),
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the repeated DiT block once (first image pays the compile, later ones are faster)",
    )
    p.add_argument(
        "--step-cache",
        type=_cache_threshold,
        default=0.0,
        help="skip the DiT's main layers on steps whose first-block change is below this (e.g. 0.05; 0 = off)",
    )


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--negative", default="", help="negative prompt (default: empty, as the official demo)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (CPU generator, reproducible across devices)")
    p.add_argument(
        "--steps", type=int, default=None, help="integration steps (official demo: 17 with midpoint = 18 grid points)"
    )
    p.add_argument("--cfg", type=float, default=5.0, help="classifier-free guidance scale")
    p.add_argument(
        "--cfg-trunc", type=float, default=0.25, help="apply CFG only while t < this (t=0 is noise); 1 = always"
    )
    p.add_argument(
        "--renorm",
        type=float,
        default=0.0,
        help="cap the guided velocity norm at this times the conditional one (0 = off)",
    )
    p.add_argument(
        "--solver",
        choices=list(SOLVERS),
        default="midpoint",
        help="; ".join(f"{s.name}: {s.summary}" for s in SOLVERS.values()),
    )
    p.add_argument("--shift", type=float, default=6.0, help="time shift of the schedule")
    p.add_argument("--width", type=int, default=None, help="image width in pixels, multiple of 16")
    p.add_argument("--height", type=int, default=None, help="image height in pixels, multiple of 16")
    p.add_argument(
        "--system-prompt",
        default="auto",
        choices=["auto", "xml", "tags", "negative", "none"],
        help="system prompt given to Gemma (training format); auto picks xml or tags",
    )


def _add_region_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--region",
        action="append",
        default=[],
        metavar="character_N=x0,y0,x1,y1",
        help="place character N in this box (0-1000 units of width/height); repeatable; overrides XML <region>",
    )
    p.add_argument(
        "--region-outside",
        choices=["shared", "all"],
        default="shared",
        help="what image tokens outside every region see: only shared text (default) or every character",
    )
    p.add_argument(
        "--region-until", type=float, default=1.0, help="apply regions while t < this (t=0 is noise); 1 = all steps"
    )
    p.add_argument("--region-soft-edge", type=float, default=0.0, help="feather width of region edges, 0-1000 units")
    p.add_argument("--region-layers", default="all", help="main layers to mask, e.g. 0-17 (default: all)")
    p.add_argument("--keep-region-tags", action="store_true", help="leave <region> tags in the text the encoders see")


def _region_overrides(args, prompt: str) -> dict[str, list[float]]:
    """--region values, checked before any model loads; RegionError/ValueError says which one is wrong."""
    from .layout import RegionError, parse_layers, parse_region_arg

    present = {c.index for c in parse(prompt).characters}
    out: dict[str, list[float]] = {}
    for value in getattr(args, "region", None) or []:
        try:
            index, box = parse_region_arg(value)
        except RegionError as exc:
            raise RegionError(f"--region {value}: region {exc}") from None
        if index not in present:
            have = ", ".join(f"character_{i}" for i in sorted(present)) or "no character blocks"
            raise RegionError(f"--region {value}: the prompt has no <character_{index}> (it has {have})")
        if f"character_{index}" in out:
            raise RegionError(f"--region {value}: character_{index} is given twice")
        out[f"character_{index}"] = box.as_list()
    try:
        parse_layers(getattr(args, "region_layers", "all"))
    except RegionError as exc:
        raise RegionError(f"--region-layers: {exc}") from None
    for flag, value, low, high in (
        ("--region-until", getattr(args, "region_until", 1.0), 0, 1),
        ("--region-soft-edge", getattr(args, "region_soft_edge", 0.0), 0, 1000),
    ):
        if not low <= value <= high:
            raise RegionError(f"{flag} {value} is outside {low}-{high}")
    return out


def _add_lora_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="FILE[:STRENGTH]",
        help="apply a LoRA (any NewBie format) at STRENGTH (default 1.0 = as trained, alpha/r); repeatable",
    )


def _check_loras(args, err) -> list | None:
    """Every --lora parsed and its file validated before any model loads; None after printing the error."""
    from .lora import parse_lora_arg

    loras = []
    for text in args.lora:
        try:
            loras.append(parse_lora_arg(text))
        except NewBieError as exc:
            print(f"error: --lora {text}: {exc}", file=err)
            return None
    return loras


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m newbie_core", description="NewBie-image-Exp0.1 text-to-image")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate one image")
    src = gen.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="prompt text: XML, tags or natural language")
    src.add_argument("--prompt-file", help="read the prompt from this file (UTF-8)")
    gen.add_argument("--output", help="PNG path (default: outputs/newbie_<time>_<seed>.png); never overwritten")
    _add_model_args(gen)
    _add_speed_args(gen)
    _add_sampling_args(gen)
    _add_region_args(gen)
    _add_lora_args(gen)
    create = sub.add_parser("create", help="interactive loop: prompt, file name, steps -> image")
    create.add_argument("--output-dir", default="outputs", help="parent of the timestamped session folder")
    _add_model_args(create)
    _add_speed_args(create)
    _add_sampling_args(create)
    _add_lora_args(create)
    return parser


DEMO_PROMPT = """<character_1>
<n>$character_1$</n>
<gender>1girl</gender>
<appearance>long_hair, blue_eyes</appearance>
<expression>smile</expression>
</character_1>

<general_tags>
<count>1girl, solo</count>
<style>anime_style</style>
</general_tags>"""


def _load_pipeline(args, out, loras=()):
    import torch

    from .pipeline import NewBiePipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.models_dir:
        print(f"loading NewBie models from {args.models_dir} ...", file=out)
        pipe = NewBiePipeline.from_models_dir(
            args.models_dir, device=device, dtype=args.dtype, offload_text_encoders=args.low_vram, vram=args.vram
        )
        tiny = False
    else:
        print("no --models-dir given: using the embedded tiny smoke-test model (random weights, not NewBie)", file=out)
        pipe, tiny = NewBiePipeline.tiny(device=device), True
        if args.vram:
            from .memory import apply_profile, get_profile

            apply_profile(pipe, get_profile(args.vram))  # the tiny model keeps its fp32 weights (no fp8 storage)
    for path, strength in loras:
        print(pipe.apply_lora(path, strength).report.summary(), file=out)
    return _speed_options(pipe, args), tiny


def _speed_options(pipe, args):
    if args.compile:
        from .dit.compile import compile_repeated_block

        compile_repeated_block(pipe.transformer)
    return pipe


def _settings(args, prompt: str, tiny: bool, steps: int | None = None, regions: dict | None = None):
    from .pipeline import GenerationSettings

    size = 64 if tiny else 1024
    return GenerationSettings(
        prompt=prompt,
        negative_prompt=args.negative,
        seed=args.seed,
        steps=steps or args.steps or 17,
        cfg=args.cfg,
        cfg_trunc=args.cfg_trunc,
        renorm=args.renorm,
        solver=args.solver,
        shift=args.shift,
        width=args.width or size,
        height=args.height or size,
        system_prompt=args.system_prompt,
        regions=regions or None,
        region_outside=getattr(args, "region_outside", "shared"),
        region_until=getattr(args, "region_until", 1.0),
        region_soft_edge=getattr(args, "region_soft_edge", 0.0),
        region_layers=getattr(args, "region_layers", "all"),
        keep_region_tags=getattr(args, "keep_region_tags", False),
        step_cache=args.step_cache,
    )


class Progress:
    """One updating line on the terminal (plain lines when not a TTY)."""

    def __init__(self, out):
        self.out = out
        self.start = time.perf_counter()

    def __call__(self, i: int, n: int) -> None:
        width = 24
        filled = int(width * i / n)
        line = f"sampling [{'#' * filled}{'.' * (width - filled)}] {i}/{n} {time.perf_counter() - self.start:.1f}s"
        if getattr(self.out, "isatty", lambda: False)():
            print("\r" + line, end="" if i < n else "\n", file=self.out, flush=True)
        elif i == n:
            print(line, file=self.out)


def validate_prompt(prompt: str) -> list[str]:
    """Raises XMLPromptError for malformed XML; returns warnings as text."""
    return [str(w) for w in parse(prompt).warnings]


def write_png(result, path: Path) -> Path:
    """Write atomically (temp file + rename) and refuse to overwrite: nothing is ever half-written or lost."""
    from PIL.PngImagePlugin import PngInfo

    from .pipeline import png_metadata

    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    for key, value in png_metadata(result).items():
        info.add_itxt(key, value)
    fd, tmp = tempfile.mkstemp(suffix=".png.part", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        with os.fdopen(fd, "wb") as fh:
            result.images[0].save(fh, format="PNG", pnginfo=info)
        os.link(tmp, path)  # fails if path exists: no overwrite, even in a race
    finally:
        os.unlink(tmp)
    return path


def cmd_generate(args, out, err) -> int:
    if args.prompt_file:
        try:
            prompt = Path(args.prompt_file).read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"error: cannot read prompt file {args.prompt_file}: {exc}", file=err)
            return EXIT_BAD_INPUT
    else:
        prompt = args.prompt if args.prompt is not None else DEMO_PROMPT
    try:
        for w in validate_prompt(prompt):
            print(f"warning: prompt {w}", file=err)
    except XMLPromptError as exc:
        print(f"error: prompt {exc}", file=err)
        return EXIT_BAD_INPUT
    try:
        regions = _region_overrides(args, prompt)
    except RegionError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_BAD_INPUT
    output = (
        Path(args.output) if args.output else Path("outputs") / f"newbie_{datetime.now():%Y%m%d-%H%M%S}_{args.seed}.png"
    )
    if output.exists():
        print(f"error: {output} already exists; choose another --output", file=err)
        return EXIT_BAD_INPUT
    loras = _check_loras(args, err)
    if loras is None:
        return EXIT_BAD_INPUT
    try:
        pipe, tiny = _load_pipeline(args, out, loras)
        settings = _settings(args, prompt, tiny, regions=regions)
        settings.validate()
        result = pipe.generate(settings, progress=Progress(err))
        write_png(result, output)
        print(result.memory.report(), file=err)
    except (NewBieError, FileExistsError) as exc:
        print(f"error: {exc}", file=err)
        return EXIT_BAD_INPUT
    print(f"wrote {output}", file=out)
    return 0


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _unique(folder: Path, stem: str) -> Path:
    path = folder / f"{stem}.png"
    n = 1
    while path.exists():
        path = folder / f"{stem}_{n}.png"
        n += 1
    return path


def cmd_create(args, inp, out, err) -> int:
    session = Path(args.output_dir) / datetime.now().strftime("%Y%m%d-%H%M%S")
    pipe = tiny = None
    loras = _check_loras(args, err)
    if loras is None:
        return EXIT_BAD_INPUT

    def ask(question: str) -> str | None:
        print(question, end="", file=out, flush=True)
        line = inp.readline()
        return None if line == "" else line.rstrip("\n")

    print("NewBie create: type a prompt (XML, tags or text), finish with an empty line; 'quit' to leave.", file=out)
    while True:
        lines = []
        first = ask("prompt> ")
        if first is None or first.strip().lower() in ("quit", "exit", "q"):
            break
        while first is not None and first != "":
            lines.append(first)
            first = ask("...> ")
        prompt = "\n".join(lines)
        if not prompt.strip():
            continue
        try:
            for w in validate_prompt(prompt):
                print(f"warning: {w}", file=out)
        except XMLPromptError as exc:
            print(f"XML error: {exc}. Please fix the prompt and enter it again.", file=out)
            continue
        name = ask("file name [image]: ")
        if name is None:
            break
        stem = _SAFE_NAME.sub("_", name.strip()).strip("._") or "image"
        steps_text = ask(f"steps [{args.steps or 17}]: ")
        if steps_text is None:
            break
        try:
            steps = int(steps_text) if steps_text.strip() else None
            if steps is not None and not 1 <= steps <= 1000:
                raise ValueError
        except ValueError:
            print(f"steps must be a whole number from 1 to 1000, not {steps_text!r}; prompt discarded", file=out)
            continue
        try:
            if pipe is None:
                pipe, tiny = _load_pipeline(args, out, loras)
            result = pipe.generate(_settings(args, prompt, tiny, steps), progress=Progress(err))
            path = write_png(result, _unique(session, stem))
        except NewBieError as exc:
            print(f"error: {exc}", file=out)
            continue
        print(f"wrote {path}", file=out)
    print("bye", file=out)
    return 0


def main(argv=None, stdin=None, stdout=None, stderr=None) -> int:
    inp, out, err = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return cmd_generate(args, out, err)
        return cmd_create(args, inp, out, err)
    except KeyboardInterrupt:
        print("\ninterrupted; nothing was written for the unfinished image", file=err)
        return 130
