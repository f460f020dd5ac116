"""Every check on user input, in one place, run before any model file is opened.

Used by the CLI (``generate``, ``create``, ``batch``), by :class:`~newbie_core.pipeline.GenerationSettings`
and by :class:`~newbie_core.pipeline.NewBiePipeline`. Each check raises :class:`ConfigError` with one
line naming the thing at fault. Messages name a *label*: the settings field for Python callers
(``cfg must be a finite number, got nan``) and the flag for the CLI (``--cfg must be ...``), so the
same check serves both.

Adding a check for a new setting or flag (other features do this):

* a :class:`GenerationSettings` field: ``@setting_check("strength")`` on a function
  ``(value, label, settings) -> None``; it then runs for the pipeline and for every CLI command;
* a CLI-only flag (a file to read, a folder): ``@arg_check`` on a function ``(args, label) -> None``;
  ``args`` is the argparse namespace, ``label(dest)`` gives the flag's name. The CLI runs every
  registered arg check before it loads anything, for every subcommand, so read flags with
  ``getattr(args, dest, None)``; a check may store the cleaned value back (``args.x = path``).

The building blocks (:func:`finite`, :func:`whole`, :func:`strength`, :func:`choice`,
:func:`existing_file`, :func:`output_target` ...) are public for those checks to reuse.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .defaults import MAX_SIDE, MAX_SIDE_LARGE, RANGES, SEED_LIMIT, SIZE_MULTIPLE, Range
from .errors import ConfigError

Label = Callable[[str], str]


def field_label(name: str) -> str:
    """Label for Python callers: the settings field's own name."""
    return name


def _num(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------ building blocks


def finite(label: str, value, rng: Range | None = None) -> float:
    """A real number (not nan/inf, not a bool), inside ``rng`` when given."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{label} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{label} must be a finite number, got {value}")
    if rng is not None and not rng.lo <= value <= rng.hi:
        raise ConfigError(f"{label} must be between {_num(rng.lo)} and {_num(rng.hi)}, got {_num(value)}")
    return float(value)


def whole(label: str, value, rng: Range | None = None) -> int:
    """A whole number (ints, or text such as an interactive answer), inside ``rng`` when given."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            span = f" from {_num(rng.lo)} to {_num(rng.hi)}" if rng else ""
            raise ConfigError(f"{label} must be a whole number{span}, got {value.strip()!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{label} must be a whole number, got {value!r}")
    if rng is not None and not rng.lo <= value <= rng.hi:
        raise ConfigError(f"{label} must be between {_num(rng.lo)} and {_num(rng.hi)}, got {value}")
    return value


def strength(label: str, value) -> float:
    """A denoising/blend strength in [0, 1] (img2img, inpaint, hires, LoRA blends...)."""
    return finite(label, value, RANGES["strength"])


def choice(label: str, value, options) -> str:
    options = list(options)
    if value not in options:
        raise ConfigError(f"{label} {value!r} is not known; choose one of: {', '.join(map(str, options))}")
    return value


def seed(label: str, value) -> int:
    """Seeds are unsigned 64-bit; every value in range gives its own noise (see ``newbie_core.noise``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{label} must be a whole number, got {value!r}")
    if not 0 <= value < SEED_LIMIT:
        raise ConfigError(f"{label} must be from 0 to 2^64-1 ({SEED_LIMIT - 1}), got {value}")
    return value


def image_size(width, height, label: Label = field_label, allow_large: bool = False) -> tuple[int, int]:
    """Both sides positive multiples of 16, at most MAX_SIDE (MAX_SIDE_LARGE with ``allow_large``)."""
    limit = MAX_SIDE_LARGE if allow_large else MAX_SIDE
    for name, value in (("width", width), ("height", height)):
        value = whole(label(name), value)
        if value < SIZE_MULTIPLE or value % SIZE_MULTIPLE:
            raise ConfigError(f"{label(name)} must be a positive multiple of {SIZE_MULTIPLE}, got {value}")
        if value > limit:
            hint = "" if allow_large else f" ({label('allow_large')} raises the limit to {MAX_SIDE_LARGE})"
            raise ConfigError(f"{label(name)} must be at most {limit}, got {value}{hint}")
    return width, height


def usable_devices() -> list[str]:
    """Device names this torch build can run on, here and now."""
    import torch

    names = ["cpu"]
    for kind, module in (("cuda", torch.cuda), ("xpu", getattr(torch, "xpu", None))):
        if module is not None and module.is_available():
            names += [kind] + [f"{kind}:{i}" for i in range(module.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return names


def device(label: str, value):
    """A torch device this build can use (None = CUDA when available, else CPU)."""
    import torch

    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto", "default")):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = str(value).strip()
    usable = usable_devices()
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{label} {text!r} is not a device name; this torch can use: {', '.join(usable)}") from None
    if dev.type not in ("cpu", "cuda", "xpu", "mps"):
        raise ConfigError(f"{label} {text!r} cannot run NewBie; this torch can use: {', '.join(usable)}")
    if dev.type != "cpu" and str(dev) not in usable:
        build = f"torch {torch.__version__}"
        kind = {"cuda": "CUDA", "xpu": "XPU", "mps": "MPS"}[dev.type]
        why = "index out of range" if dev.type in usable else f"{build} has no usable {kind} device"
        raise ConfigError(f"{label} {text!r} is not available ({why}); this torch can use: {', '.join(usable)}")
    return dev


def existing_file(label: str, value) -> Path:
    """A readable file (``~`` expanded)."""
    path = Path(str(value)).expanduser()
    if not path.exists():
        raise ConfigError(f"{label} {value}: no such file")
    if not path.is_file():
        raise ConfigError(f"{label} {value}: not a file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{label} {value}: not readable (permission denied)")
    return path


def writable_folder(label: str, folder: Path) -> Path:
    """``folder`` exists and is writable, or can be created (its nearest existing parent is a writable folder)."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{label}: cannot create folder {folder}: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{label}: folder {probe} is not writable")
    return folder


#: Output file formats by extension; PNG keeps text chunks, JPEG/WebP keep EXIF UserComment + XMP.
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


@dataclass(frozen=True)
class OutputTarget:
    path: Path
    format: str  # a key of PIL's writers: "PNG", "JPEG", "WEBP"


def image_format(label: str, path: Path, shown: str) -> str:
    fmt = IMAGE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        what = f"extension {path.suffix!r} is not an image format" if path.suffix else "no extension"
        raise ConfigError(
            f"{label} {shown}: {what}; end the name with .png, .jpg, .jpeg or .webp (or with / to write into a folder)"
        )
    return fmt


def output_target(label: str, value, default_name: str) -> OutputTarget:
    """Where an image goes: ``~`` expanded; an existing folder or a trailing ``/`` means ``default_name`` inside it.

    The extension picks the format; an existing file is refused (outputs are never overwritten).
    """
    text = str(value)
    path = Path(text).expanduser()
    if text.endswith(("/", os.sep)) or path.is_dir():
        path = path / default_name
    fmt = image_format(label, path, text)
    if path.exists() or path.is_symlink():
        raise ConfigError(f"{label} {path} already exists; choose another name (outputs are never overwritten)")
    writable_folder(label, path.parent)
    return OutputTarget(path, fmt)


def prompt_text(label: str, text: str) -> tuple[str, list[str]]:
    """Prompt without a UTF-8 BOM, plus warnings (XML oddities, empty prompt). Malformed XML is an error."""
    from .xml_prompt import XMLPromptError, parse

    text = text.removeprefix("\ufeff")
    try:
        warnings = [f"{label} {w}" for w in parse(text).warnings]
    except XMLPromptError as exc:
        raise ConfigError(f"{label} {exc}") from None
    return text, warnings


# ------------------------------------------------------------------------------ registries

SettingCheck = Callable[[object, str, object], None]
ArgCheck = Callable[[object, Label], None]
SETTING_CHECKS: dict[str, list[SettingCheck]] = {}
ARG_CHECKS: list[ArgCheck] = []


def setting_check(*fields: str):
    """Register ``fn(value, label, settings)`` for these GenerationSettings fields."""

    def register(fn: SettingCheck) -> SettingCheck:
        for name in fields:
            SETTING_CHECKS.setdefault(name, []).append(fn)
        return fn

    return register


def arg_check(fn: ArgCheck) -> ArgCheck:
    """Register ``fn(args, label)``, run by the CLI on the parsed flags before anything loads."""
    ARG_CHECKS.append(fn)
    return fn


def check_settings(settings, label: Label = field_label) -> None:
    """Run every registered check on ``settings`` (a GenerationSettings); the first problem raises."""
    image_size(settings.width, settings.height, label, getattr(settings, "allow_large", False))
    for name, checks in SETTING_CHECKS.items():
        if hasattr(settings, name):
            for check in checks:
                check(getattr(settings, name), label(name), settings)


def check_args(args, label: Label) -> None:
    """Run every registered CLI check on the argparse namespace."""
    for check in ARG_CHECKS:
        check(args, label)


# ------------------------------------------------------------------------------ the base settings


@setting_check("steps")
def _steps(value, label, _settings):
    whole(label, value, RANGES["steps"])


def _register_range(name: str) -> None:
    @setting_check(name)
    def check(value, label, _settings):
        finite(label, value, RANGES[name])


for _name in ("cfg", "cfg_trunc", "renorm", "shift", "step_cache"):
    _register_range(_name)


@setting_check("seed")
def _seed(value, label, _settings):
    seed(label, value)


@setting_check("batch_size")
def _batch(value, label, _settings):
    whole(label, value, Range(1, 64))


@setting_check("solver")
def _solver(value, label, _settings):
    from .solvers import SOLVERS  # the solver registry

    choice(label, value, SOLVERS)


@setting_check("system_prompt", "negative_system_prompt")
def _system_prompt(value, label, _settings):
    from .text.conditioning import PRESETS

    choice(label, value, PRESETS)


@setting_check("prompt_escapes")
def _escapes(value, label, _settings):
    from .text.conditioning import ESCAPE_MODES

    choice(label, value, ESCAPE_MODES)


@setting_check("prompt", "negative_prompt")
def _prompt(value, label, _settings):
    if not isinstance(value, str):
        raise ConfigError(f"{label} must be text, got {type(value).__name__}")
