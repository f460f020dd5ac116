"""Command line: ``python -m newbie_core generate`` (one image), ``create`` (interactive), ``write`` (XML prompt).

Without ``--models-dir`` both run the embedded tiny smoke-test model, so they work on a fresh
machine with no downloads; with it they load the real NewBie files.

Every flag is checked (``newbie_core.validation``) before any model file is opened. Mistakes end
with one line ``error: ...`` and exit code 2, failures while running (a write that fails, out of
memory) with one line and exit code 1, Ctrl-C with a line saying what was written (checked on
disk) and exit code 130. ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
import traceback
import unicodedata
from datetime import datetime
from pathlib import Path

from . import validation
from .defaults import MAX_SIDE, MAX_SIDE_LARGE, OFFICIAL, RANGES, TINY_SIZE
from .errors import ConfigError, NewBieError

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``error: ...``) instead of the usage block."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")


def _add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .dtypes import dtype_names

    p.add_argument(
        "--models-dir",
        help="ComfyUI models/ folder or the official HF folder; omit for the embedded tiny smoke-test model "
        f"(random toy weights, not NewBie; {TINY_SIZE}x{TINY_SIZE} by default)",
    )
    p.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument(
        "--dtype",
        default=None,
        help=f"weight dtype for real models: {', '.join(dtype_names())} (default: bf16 on GPU, fp32 on CPU; "
        "what each means is listed below)",
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
    from .solvers import SOLVERS
    from .text.conditioning import PRESETS

    o = OFFICIAL
    p.add_argument("--negative", default="", help="negative prompt (default: empty, as the official demo)")
    p.add_argument(
        "--seed",
        type=int,
        default=o.seed,
        help=f"noise seed, 0 to 2^64-1 (default: {o.seed}; CPU noise, same on every device)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=o.steps,
        help=f"integration steps (default: {o.steps}; with midpoint = the official demo's 18 grid points)",
    )
    p.add_argument("--cfg", type=float, default=o.cfg, help=f"classifier-free guidance scale (default: {o.cfg:g})")
    p.add_argument(
        "--cfg-trunc",
        type=float,
        default=o.cfg_trunc,
        help=f"apply CFG only while t < this (t=0 is noise); 1 = always (default: {o.cfg_trunc:g})",
    )
    p.add_argument(
        "--renorm",
        type=float,
        default=o.renorm,
        help=f"cap the guided velocity norm at this times the conditional one; 0 = off (default: {o.renorm:g})",
    )
    p.add_argument(
        "--solver",
        choices=list(SOLVERS),
        default=o.solver,
        help="; ".join(f"{s.name}: {s.summary}" for s in SOLVERS.values()) + f" (default: {o.solver})",
    )
    p.add_argument("--shift", type=float, default=o.shift, help=f"time shift of the schedule (default: {o.shift:g})")
    size_help = f"multiple of 16, at most {MAX_SIDE} (default: {o.width}; {TINY_SIZE} for the embedded tiny model)"
    p.add_argument("--width", type=int, default=None, help="image width in pixels, " + size_help)
    p.add_argument("--height", type=int, default=None, help="image height in pixels, " + size_help)
    p.add_argument("--allow-large", action="store_true", help=f"allow sides above {MAX_SIDE} (up to {MAX_SIDE_LARGE})")
    p.add_argument(
        "--system-prompt",
        default="auto",
        choices=[name for name in PRESETS if name != "custom"],
        help="system prompt given to Gemma (training format); auto picks xml or tags (default: auto)",
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
    """--region values, checked against the prompt before any model loads (ConfigError names the bad one)."""
    from .layout import RegionError, parse_region_arg
    from .xml_prompt import parse

    present = {c.index for c in parse(prompt).characters}
    out: dict[str, list[float]] = {}
    for value in getattr(args, "region", None) or []:
        try:
            index, box = parse_region_arg(value)
        except RegionError as exc:
            raise ConfigError(f"--region {value}: region {exc}") from None
        if index not in present:
            have = ", ".join(f"character_{i}" for i in sorted(present)) or "no character blocks"
            raise ConfigError(f"--region {value}: the prompt has no <character_{index}> (it has {have})")
        if f"character_{index}" in out:
            raise ConfigError(f"--region {value}: character_{index} is given twice")
        out[f"character_{index}"] = box.as_list()
    return out


def _add_image_args(p: argparse.ArgumentParser) -> None:
    """Image to image, inpainting, the hires second pass, and re-running a PNG (newbie_core.img2img)."""
    p.add_argument("--init-image", help="start from this image (img2img); its size is the default output size")
    p.add_argument(
        "--strength",
        type=float,
        default=None,
        help="how much of the schedule to run on the init image, 0..1 (1 = from noise; default 0.6, 1.0 with --mask)",
    )
    p.add_argument("--mask", help="inpaint mask for --init-image, same size; white = repaint, black = keep")
    p.add_argument(
        "--mask-feather", type=int, default=8, help="soft edge in pixels around the mask (pixels beyond stay exact)"
    )
    p.add_argument(
        "--hires-scale", type=float, default=1.0, help="second pass at this times the size, e.g. 2 (1 = off)"
    )
    p.add_argument("--hires-strength", type=float, default=0.35, help="strength of the hires pass, 0..1")
    p.add_argument("--hires-steps", type=int, default=None, help="steps of the hires pass (default: --steps)")
    p.add_argument(
        "--hires-mode",
        choices=["pixel", "latent"],
        default="pixel",
        help="upscale the first result as pixels (through the VAE) or as latents",
    )
    p.add_argument(
        "--from-png",
        help="take the prompt and every setting from a PNG this tool wrote; other flags given override them",
    )


#: argparse destinations -> GenerationSettings fields they set (identity where not listed).
_FIELD_OF_FLAG = {"negative": "negative_prompt", "prompt_file": "prompt", "region": "regions"}
_NOT_SETTINGS = {"command", "output", "models_dir", "device", "dtype", "low_vram", "from_png", "output_dir", "lora"}


def _explicit_flags(argv) -> set[str]:
    """Destinations of the flags actually typed (parsing again with every default suppressed)."""
    parser = build_parser()
    parsers = [parser]
    while parsers:
        current = parsers.pop()
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.dest != "help":
                action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command"}


def _add_lora_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="FILE[:STRENGTH]",
        help="apply a LoRA (any NewBie format) at STRENGTH (default 1.0 = as trained, alpha/r); repeatable",
    )


def _epilog() -> str:
    from .dtypes import help_text

    return (
        f"Without --models-dir the embedded tiny smoke-test model runs ({TINY_SIZE}x{TINY_SIZE} by default;\n"
        "random weights: its pictures are structured noise).\n"
        "Exit codes: 0 done, 2 bad input (nothing loaded or written), 1 failure while running, 130 Ctrl-C.\n\n"
        "--dtype on GPU and CPU:\n" + help_text()
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m newbie_core", description="NewBie-image-Exp0.1 text-to-image")
    sub = parser.add_subparsers(dest="command", required=True)
    raw = {"formatter_class": argparse.RawDescriptionHelpFormatter, "epilog": _epilog()}
    gen = sub.add_parser("generate", help="generate one image", **raw)
    src = gen.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="prompt text: XML, tags or natural language (default: a demo XML prompt)")
    src.add_argument("--prompt-file", help="read the prompt from this file (UTF-8; a BOM is ignored)")
    gen.add_argument(
        "--output",
        help="image path; .png, .jpg/.jpeg or .webp picks the format; an existing folder or a trailing / writes "
        "newbie_<time>_<seed>.png into it (default: outputs/); never overwritten",
    )
    _add_model_args(gen)
    _add_speed_args(gen)
    _add_sampling_args(gen)
    _add_region_args(gen)
    _add_image_args(gen)
    _add_lora_args(gen)
    _add_common_args(gen)
    create = sub.add_parser("create", help="interactive loop: prompt, file name, steps -> image", **raw)
    create.add_argument("--output-dir", default="outputs", help="parent of the timestamped session folder")
    _add_model_args(create)
    _add_speed_args(create)
    _add_sampling_args(create)
    _add_lora_args(create)
    _add_common_args(create)
    _add_batch_command(sub)
    _add_write_args(sub)
    return parser


#: GenerationSettings fields whose flag has another name.
SETTING_FLAGS = {"negative_prompt": "--negative"}


def flag_labels(parser: argparse.ArgumentParser, args) -> validation.Label:
    """Setting/flag dest -> the flag users typed (``cfg_trunc`` -> ``--cfg-trunc``); other names unchanged."""
    flags = dict(SETTING_FLAGS)
    for action in _subparser(parser, args)._actions:
        longs = [s for s in action.option_strings if s.startswith("--")]
        if longs:
            flags[action.dest] = longs[0]
    return lambda name: flags.get(name, name)


def _subparser(parser, args):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[args.command]


def _add_batch_command(sub) -> None:
    """``batch``: a prompt list -> DIR/<id>.png + manifest.jsonl; resumable, splits under torchrun (newbie_core.batch)."""
    from .batch import add_batch_args

    batch = sub.add_parser("batch", help="prompt list (JSONL/text/CSV) -> one PNG per item; resumable, multi-GPU")
    add_batch_args(batch)
    _add_model_args(batch)
    _add_sampling_args(batch)
    _add_lora_args(batch)
    _add_speed_args(batch)
    _add_common_args(batch)


def _add_write_args(sub) -> None:
    from .writer.cli import add_write_parser

    _add_common_args(add_write_parser(sub))


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


# ------------------------------------------------------------------------------ checks before any loading


@validation.arg_check
def _check_models_dir(args, label):
    if getattr(args, "models_dir", None):
        path = Path(args.models_dir).expanduser()
        if not path.is_dir():
            raise ConfigError(f"{label('models_dir')} {args.models_dir}: no such folder")
        args.models_dir = str(path)


@validation.arg_check
def _check_device_and_dtype(args, label):
    from .dtypes import parse_dtype

    args.device = str(validation.device(label("device"), args.device))
    try:
        parse_dtype(args.dtype)
    except ConfigError as exc:
        raise ConfigError(f"{label('dtype')}: {exc}") from None


@validation.arg_check
def _check_loras(args, label):
    """Every --lora parsed and its file validated before any model loads; kept as ``args.lora_files``."""
    from .lora import parse_lora_arg

    args.lora_files = []
    for text in getattr(args, "lora", None) or []:
        try:
            args.lora_files.append(parse_lora_arg(text))
        except NewBieError as exc:
            raise ConfigError(f"{label('lora')} {text}: {exc}") from None


def read_prompt_file(label: str, value) -> str:
    path = validation.existing_file(label, value)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")  # a BOM is dropped with the other prompt checks
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{label} {value}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None


def checked_prompt(label: str, text: str, err) -> str:
    text, warnings = validation.prompt_text(label, text)
    for w in warnings:
        print(f"warning: {w}", file=err)
    if not text.strip():
        print(f"warning: {label} is empty: the image is not guided by any text", file=err)
    return text


# ------------------------------------------------------------------------------ running


def _load_pipeline(args, out, loras=()):
    from .pipeline import NewBiePipeline

    if args.models_dir:
        print(f"loading NewBie models from {args.models_dir} ...", file=out)
        pipe = NewBiePipeline.from_models_dir(
            args.models_dir,
            device=args.device,
            dtype=args.dtype,
            offload_text_encoders=args.low_vram,
            vram=args.vram,
        )
        tiny = False
    else:
        print("no --models-dir given: using the embedded tiny smoke-test model (random weights, not NewBie)", file=out)
        pipe, tiny = NewBiePipeline.tiny(device=args.device), True
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


def _settings(args, prompt: str, tiny: bool, steps: int | None = None, base: dict | None = None, given=()):
    """Settings from the flags; with ``base`` (a PNG's settings) only the flags in ``given`` override it."""
    import dataclasses

    from .pipeline import GenerationSettings

    size = TINY_SIZE if tiny else OFFICIAL.width
    from_flags = dict(
        prompt=prompt,
        negative_prompt=args.negative,
        seed=args.seed,
        steps=args.steps if steps is None else steps,
        cfg=args.cfg,
        cfg_trunc=args.cfg_trunc,
        renorm=args.renorm,
        solver=args.solver,
        shift=args.shift,
        width=args.width,
        height=args.height,
        system_prompt=args.system_prompt,
        allow_large=args.allow_large,
        regions=getattr(args, "region_boxes", None) or None,
        region_outside=getattr(args, "region_outside", "shared"),
        region_until=getattr(args, "region_until", 1.0),
        region_soft_edge=getattr(args, "region_soft_edge", 0.0),
        region_layers=getattr(args, "region_layers", "all"),
        keep_region_tags=getattr(args, "keep_region_tags", False),
        step_cache=args.step_cache,
    )
    for name in ("init_image", "strength", "mask", "mask_feather", "hires_scale", "hires_strength", "hires_steps"):
        if hasattr(args, name):
            from_flags[name] = getattr(args, name)
    if hasattr(args, "hires_mode"):
        from_flags["hires_mode"] = args.hires_mode
    if base is None:
        values = from_flags
    else:
        known = {f.name for f in dataclasses.fields(GenerationSettings)}
        values = {k: v for k, v in base.items() if k in known}
        for dest in given:
            field = _FIELD_OF_FLAG.get(dest, dest)
            if dest not in _NOT_SETTINGS and field in from_flags:
                values[field] = from_flags[field]
        if "steps" in given:
            values["steps"] = from_flags["steps"]
    if values.get("width") is None or values.get("height") is None:
        default = (size, size)
        if values.get("init_image"):
            from . import img2img

            default = img2img.default_size(img2img.image_size(values["init_image"], img2img.flag_label))
        values["width"] = default[0] if values.get("width") is None else values["width"]
        values["height"] = default[1] if values.get("height") is None else values["height"]
    return GenerationSettings(**values)


def _png_base(path: str, err, flag: str = "--from-png") -> dict:
    """A PNG's settings for --from-png, with a warning for any field this version does not know."""
    import dataclasses

    from .pipeline import GenerationSettings
    from .png_runs import cli_settings

    try:
        meta = cli_settings(path)
    except ConfigError as exc:
        raise ConfigError(f"{flag} {exc}") from None
    known = {f.name for f in dataclasses.fields(GenerationSettings)} | {"model", "loras"}
    unknown = sorted(set(meta) - known)
    if unknown:
        print(
            f"warning: --from-png {path}: ignoring settings this version does not know: {', '.join(unknown)}", file=err
        )
    return meta


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


def write_image(result, target: validation.OutputTarget) -> Path:
    """Atomic, never overwriting, format from the target (see ``newbie_core.image_files``)."""
    from . import image_files
    from .pipeline import png_metadata

    return image_files.save(result.images[0], target, png_metadata(result))


def _warn_if_made_differently(png, base: dict, pipe, err) -> None:
    """--from-png: say so when the model or the LoRAs differ from the ones the PNG was made with."""
    if base.get("model") and base["model"] != pipe.label:
        print(f"warning: --from-png {png} was made with {base['model']}; this run uses {pipe.label}", file=err)
    recorded, applied = base.get("loras", ""), ", ".join(pipe.loras)
    if recorded != applied:
        print(
            f"warning: --from-png {png} was made with LoRAs [{recorded}], this run applies [{applied}] "
            "(give the same files with --lora to reproduce it)",
            file=err,
        )


def interrupted_message(path: Path | None, nothing: str = "interrupted before any image was written") -> str:
    """What Ctrl-C left behind, read from the disk rather than assumed (``nothing``: when no path was chosen)."""
    if path is None:
        return nothing
    if path.is_file():
        return f"interrupted; {path} had been written completely"
    return f"interrupted; nothing was written ({path} does not exist)"


def _default_name(seed: int) -> str:
    return f"newbie_{datetime.now():%Y%m%d-%H%M%S}_{seed}.png"


def cmd_generate(args, out, err, label, given=()) -> int:
    from . import img2img

    base = _png_base(args.from_png, err, label("from_png")) if args.from_png else None
    if args.prompt_file:
        prompt = read_prompt_file(label("prompt_file"), args.prompt_file)
        prompt = checked_prompt(f"prompt file {args.prompt_file}", prompt, err)
    elif args.prompt is not None:
        prompt = checked_prompt("prompt", args.prompt, err)
    else:
        prompt = checked_prompt("prompt", base["prompt"] if base is not None else DEMO_PROMPT, err)
    if args.negative:
        args.negative = validation.prompt_text(label("negative"), args.negative)[0]
    args.region_boxes = _region_overrides(args, prompt)
    # everything about the input is checked before any model loads
    settings = _settings(args, prompt, tiny=not args.models_dir, base=base, given=given)
    settings.validate(label)
    validation.check_args(args, label)
    inputs = img2img.load_inputs(settings, img2img.flag_label)
    if inputs is not None and inputs.source_size != (settings.width, settings.height):
        w, h = inputs.source_size
        print(
            f"warning: --init-image {settings.init_image} is {w}x{h}; resized to {settings.width}x{settings.height}",
            file=err,
        )
    if base is not None and settings.init_image and base.get("init_image") == settings.init_image:
        recorded = base.get("init_image_sha256")
        if recorded and recorded != img2img.file_sha256(settings.init_image):
            print(f"warning: init image {settings.init_image} changed since that run; the result will differ", file=err)
    target = validation.output_target(label("output"), args.output or "outputs/", _default_name(settings.seed))
    try:
        pipe, _ = _load_pipeline(args, out, args.lora_files)
        if base is not None:
            _warn_if_made_differently(args.from_png, base, pipe, err)
        result = pipe.generate(settings, progress=Progress(err))
        write_image(result, target)
        print(result.memory.report(), file=err)
        print(f"wrote {target.path}", file=out)
    except KeyboardInterrupt:
        print("\n" + interrupted_message(target.path), file=err)
        return EXIT_INTERRUPTED
    return 0


# ------------------------------------------------------------------------------ create

_FORBIDDEN = set('/\\:*?"<>|')


def file_name(answer: str, default: str = "image") -> tuple[str, str]:
    """(stem, extension) from a typed name: known image extensions kept, others get .png; any script kept.

    Spaces and characters some file system refuses (``/ \\ : * ? " < > |``, control characters) become ``_``;
    characters the file system's encoding cannot store become ``_`` too.
    """
    name = unicodedata.normalize("NFC", answer.strip())
    name = "".join("_" if c in _FORBIDDEN or unicodedata.category(c).startswith("C") else c for c in name)
    name = re.sub(r"\s+", "_", name)
    name = name.strip(" .") or default
    stem, ext = os.path.splitext(name)
    if ext.lower() not in validation.IMAGE_FORMATS or not stem.strip(" ."):
        stem, ext = name, ".png"
    encoding = sys.getfilesystemencoding()
    stem = "".join(c if _encodable(c, encoding) else "_" for c in stem)
    while len(stem.encode(encoding, "replace")) > 200:  # room for _N and the extension under 255 bytes
        stem = stem[:-1]
    return stem, ext.lower()


def _encodable(c: str, encoding: str) -> bool:
    try:
        c.encode(encoding)
        return True
    except UnicodeEncodeError:
        return False


def _unique(folder: Path, stem: str, ext: str = ".png") -> Path:
    path = folder / f"{stem}{ext}"
    n = 1
    while path.exists():
        path = folder / f"{stem}_{n}{ext}"
        n += 1
    return path


def cmd_create(args, inp, out, err, label) -> int:
    root = Path(args.output_dir).expanduser()
    validation.writable_folder(label("output_dir"), root)
    _settings(args, "", tiny=not args.models_dir).validate(label)
    validation.check_args(args, label)
    session = root / datetime.now().strftime("%Y%m%d-%H%M%S")
    pipe = tiny = None

    def ask(question: str) -> str | None:
        print(question, end="", file=out, flush=True)
        line = inp.readline()
        return None if line == "" else line.rstrip("\r\n")

    print("NewBie create: type a prompt (XML, tags or text), finish with an empty line; 'quit' to leave.", file=out)
    try:
        while True:
            lines = []
            first = ask("prompt> ")
            if first is None or first.strip().lower() in ("quit", "exit", "q"):
                break
            while first is not None and first != "":
                lines.append(first)
                first = ask("...> ")
            prompt = "\n".join(lines).removeprefix("\ufeff")
            if not prompt.strip():
                continue
            try:
                prompt = checked_prompt("prompt", prompt, out)
            except ConfigError as exc:
                print(
                    f"XML error: {str(exc).removeprefix('prompt ')}. Please fix the prompt and enter it again.",
                    file=out,
                )
                continue
            name = ask("file name [image]: ")
            if name is None:
                break
            stem, ext = file_name(name)
            steps = None
            while steps is None:
                answer = ask(f"steps [{args.steps}]: ")
                if answer is None:
                    break
                try:
                    steps = validation.whole("steps", answer, RANGES["steps"]) if answer.strip() else args.steps
                except ConfigError as exc:
                    print(f"{exc}; please answer again (the prompt is kept)", file=out)
            if steps is None:
                break
            path = None
            try:
                if pipe is None:
                    pipe, tiny = _load_pipeline(args, out, args.lora_files)
                result = pipe.generate(_settings(args, prompt, tiny, steps), progress=Progress(err))
                path = _unique(session, stem, ext)
                write_image(result, validation.OutputTarget(path, validation.IMAGE_FORMATS[ext]))
            except KeyboardInterrupt:
                print(
                    "\n"
                    + interrupted_message(path, "interrupted; this image was not written")
                    + "; back to the prompt (Ctrl-C again to leave)",
                    file=out,
                )
                continue
            except NewBieError as exc:
                print(f"error: {exc}; the session goes on", file=out)
                continue
            except Exception as exc:  # out of memory and the like: this image failed, the session survives
                if args.debug:
                    traceback.print_exc(file=err)
                print(f"error: {_one_line(exc)}; the session goes on", file=out)
                continue
            print(f"wrote {path}", file=out)
    except KeyboardInterrupt:
        print("", file=out)
    print("bye", file=out)
    return 0


# ------------------------------------------------------------------------------ entry point


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def main(argv=None, stdin=None, stdout=None, stderr=None) -> int:
    inp, out, err = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    parser = build_parser()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error (already printed as one line)
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    label = flag_labels(parser, args)
    try:
        if args.command == "generate":
            given = _explicit_flags(argv if argv is not None else sys.argv[1:]) if args.from_png else ()
            return cmd_generate(args, out, err, label, given)
        if args.command == "batch":
            from .batch import run_batch

            return run_batch(args, out, err, label)
        if args.command == "write":
            from .writer.cli import cmd_write

            return cmd_write(args, out, err)
        return cmd_create(args, inp, out, err, label)
    except KeyboardInterrupt:
        print("\n" + interrupted_message(None), file=err)
        return EXIT_INTERRUPTED
    except Exception as exc:
        from .image_files import WriteError

        if args.debug:
            traceback.print_exc(file=err)
        if isinstance(exc, WriteError):
            print(f"error: {exc}", file=err)
            return EXIT_FAILED
        if isinstance(exc, NewBieError):
            print(f"error: {exc}", file=err)
            return EXIT_BAD_INPUT
        print(f"error: {_one_line(exc)}" + ("" if args.debug else " (run with --debug for the traceback)"), file=err)
        return EXIT_FAILED
