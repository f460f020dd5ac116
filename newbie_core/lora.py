"""One LoRA loader for every format NewBie LoRAs come in, each with its own scale rule.

A file is read into ``Part`` objects (one per module in the file), each mapped onto one weight of
the DiT (``layers.3.attention.qkv.weight``, or a row range of it for diffusers' ``to_q/to_k/to_v``).
``TargetPatch.apply(weight, strength)`` computes the patched weight; the standalone pipeline merges
it into its modules and the ComfyUI node hands the same object to ComfyUI's patcher, so both apply
the same numbers. Every module of the file is either applied or listed in the ``LoraReport``.

Formats and scales (``s`` multiplies the low-rank product; strength multiplies the resulting delta):

* PEFT ``lora_A``/``lora_B`` (official NewBie trainer, diffusion-pipe, diffusers): s = alpha / r, or
  alpha / sqrt(r) with ``use_rslora``; r and alpha from ``adapter_config.json`` (``rank_pattern`` /
  ``alpha_pattern`` per module), else the file's metadata, else s = 1 (said in the report).
  ``lora_magnitude_vector`` (DoRA): W' = m * (W + s·BA) / ||W + s·BA|| per output row.
* ``lora_down``/``lora_up`` (kohya ``lora_unet_*``, ``diffusion_model.*``): s = alpha / r with the
  module's ``.alpha``, else 1. ``dora_scale`` as DoRA (per output row, or per input column for [1, in]).
* LyCORIS LoKr: delta = kron(w1, w2); s = alpha / r when a factor is decomposed (``_a``/``_b``), else 1.
* LyCORIS LoHa: delta = (w1a·w1b) * (w2a·w2b), s = alpha / r. Full: ``diff`` / ``diff_b``, s = 1.

Strength 1.0 therefore means "as trained" (the trainer's alpha / r). The official NewBie ComfyUI
node applies PEFT files with scale 1 (it reads no adapter_config), i.e. its 1.0 equals our
``r / alpha`` (2.0 for the trainer's default r 8, alpha 4).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import CheckpointError, ConfigError
from .weights import read_header

log = logging.getLogger("newbie")

#: Prefixes trainers put in front of the DiT's own module names (dotted names).
MODULE_PREFIXES = (
    "unet.base_model.model.",
    "base_model.model.",
    "model.diffusion_model.",
    "diffusion_model.",
    "transformer.",
    "model.",
)
#: Prefixes in front of names whose dots became underscores (kohya, LyCORIS).
UNDERSCORE_PREFIXES = ("lora_unet_", "lycoris_", "lora_transformer_")

#: Tensor slots a module can carry, longest first so ``lora_A.default.weight`` wins over ``weight``.
_SLOTS = {
    "lora_A.default.weight": "lora_A",
    "lora_B.default.weight": "lora_B",
    "lora_magnitude_vector.default.weight": "magnitude",
    "lora_magnitude_vector.weight": "magnitude",
    "lora_magnitude_vector.default": "magnitude",
    "lora_magnitude_vector": "magnitude",
    "lora_A.weight": "lora_A",
    "lora_B.weight": "lora_B",
    "lora_down.weight": "lora_down",
    "lora_up.weight": "lora_up",
    "lora_mid.weight": "lora_mid",
    "dora_scale": "dora_scale",
    "alpha": "alpha",
    "lokr_w1_a": "lokr_w1_a",
    "lokr_w1_b": "lokr_w1_b",
    "lokr_w2_a": "lokr_w2_a",
    "lokr_w2_b": "lokr_w2_b",
    "lokr_w1": "lokr_w1",
    "lokr_w2": "lokr_w2",
    "lokr_t2": "lokr_t2",
    "hada_w1_a": "hada_w1_a",
    "hada_w1_b": "hada_w1_b",
    "hada_w2_a": "hada_w2_a",
    "hada_w2_b": "hada_w2_b",
    "hada_t1": "hada_t1",
    "hada_t2": "hada_t2",
    "diff_b": "diff_b",
    "diff": "diff",
}
_SLOT_RE = re.compile(r"^(.+?)\.(" + "|".join(re.escape(s) for s in _SLOTS) + r")$")

#: diffusers / SimpleTuner / ai-toolkit Lumina2 names -> the DiT's names (``{b}`` = ``layers.3`` etc.).
_DIFFUSERS = (
    (re.compile(r"^(.+)\.(?:attn|attention)\.to_([qkv])$"), "{b}.attention.qkv", "{x}"),
    (re.compile(r"^(.+)\.(?:attn|attention)\.to_out\.0$"), "{b}.attention.out", None),
    (re.compile(r"^(.+)\.feed_forward\.linear_([123])$"), "{b}.feed_forward.w{x}", None),
    (re.compile(r"^(.+)\.norm1\.linear$"), "{b}.adaLN_modulation.1", None),
)


# ------------------------------------------------------------------------------ the file


@dataclass
class LoraFile:
    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    adapter_config: dict | None = None
    adapter_config_path: Path | None = None


def _adapter_config_beside(path: Path) -> Path | None:
    for name in (f"{path.stem}.adapter_config.json", f"{path.stem}_adapter_config.json", "adapter_config.json"):
        candidate = path.with_name(name)
        if candidate.is_file():
            return candidate
    return None


def read_lora(path) -> LoraFile:
    """A LoRA file (safetensors only, validated) plus the PEFT ``adapter_config.json`` beside it."""
    from safetensors.torch import load_file

    path = Path(path)
    header = read_header(path)  # refuses pickles and truncated files, naming them
    if not any(_SLOT_RE.match(k) for k in header.tensors):
        raise CheckpointError(f"{path}: no LoRA tensors (lora_A/B, lora_up/down, lokr_*, hada_*, diff) in this file")
    config, config_path = None, _adapter_config_beside(path)
    if config_path is not None:
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{config_path}: unreadable adapter_config.json ({exc})") from None
    if config is None and header.metadata.get("lora_adapter_metadata"):  # diffusers stores the LoraConfig here
        try:
            config = json.loads(header.metadata["lora_adapter_metadata"])
        except ValueError:
            config = None
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: cannot read LoRA tensors ({exc})") from None
    return LoraFile(path, tensors, header.metadata, config, config_path)


# ------------------------------------------------------------------------------ patches


@dataclass
class Part:
    """One module of the file applied to (a row range of) one target weight."""

    source: str
    kind: str  # lora | lokr | loha | full
    slots: dict[str, int]  # slot name -> index into TargetPatch.tensors
    scale: float
    rows: tuple[int, int] | None = None
    multiplier: float = 1.0
    dora_axis: str | None = None  # "out" (per row) or "in" (per column)


@dataclass
class TargetPatch:
    """Everything a LoRA file does to one weight; ``apply`` gives the patched weight."""

    target: str
    parts: list[Part]
    tensors: list[torch.Tensor]

    def with_tensors(self, tensors) -> TargetPatch:
        return dataclasses.replace(self, tensors=list(tensors))

    def _t(self, part: Part, slot: str, like: torch.Tensor) -> torch.Tensor:
        return self.tensors[part.slots[slot]].to(device=like.device, dtype=like.dtype)

    def part_delta(self, part: Part, like: torch.Tensor) -> torch.Tensor:
        """The part's ``s * product`` in the dtype/device of ``like`` (shape of its rows of the target)."""
        t = lambda slot: self._t(part, slot, like)  # noqa: E731
        has = part.slots.__contains__
        if part.kind == "lora":
            up, down = (t("lora_B"), t("lora_A")) if has("lora_A") else (t("lora_up"), t("lora_down"))
            delta = up.flatten(1) @ down.flatten(1)
        elif part.kind == "lokr":
            w1 = t("lokr_w1") if has("lokr_w1") else t("lokr_w1_a") @ t("lokr_w1_b")
            w2 = t("lokr_w2") if has("lokr_w2") else t("lokr_w2_a") @ t("lokr_w2_b")
            delta = torch.kron(w1, w2)
        elif part.kind == "loha":
            delta = (t("hada_w1_a") @ t("hada_w1_b")) * (t("hada_w2_a") @ t("hada_w2_b"))
        else:
            delta = t("diff_b") if has("diff_b") else t("diff")
        return delta * part.scale

    def apply(self, weight: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        """``weight`` patched by every part at ``strength`` (computed in float32, returned in float32)."""
        w = weight.float().clone()
        for part in self.parts:
            rows = slice(*part.rows) if part.rows else slice(None)
            base = w[rows]
            delta = self.part_delta(part, base).reshape(base.shape)
            k = strength * part.multiplier
            if part.dora_axis is None:
                w[rows] = base + k * delta
                continue
            merged = base + delta
            m = self._t(part, "magnitude" if "magnitude" in part.slots else "dora_scale", base)
            if part.dora_axis == "out":
                norm = merged.flatten(1).norm(dim=1).reshape(-1, *[1] * (merged.dim() - 1))
                m = m.reshape(norm.shape)
            else:
                norm = merged.norm(dim=0, keepdim=True)
                m = m.reshape(norm.shape)
            dora = merged * (m / norm)
            w[rows] = base + k * (dora - base)
        return w


@dataclass
class LoraReport:
    file: str
    formats: list[str] = field(default_factory=list)
    applied: list[tuple[str, str]] = field(default_factory=list)  # (file module, target)
    unmatched: list[str] = field(default_factory=list)  # file modules with no target in the model
    partial: list[tuple[str, str]] = field(default_factory=list)  # (file module, what was left out)
    unused_keys: list[str] = field(default_factory=list)  # tensors that belong to no module
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.unmatched or self.partial or self.unused_keys)

    def summary(self, limit: int = 8) -> str:
        def few(items):
            items = list(items)
            return ", ".join(items[:limit]) + (f" ... (+{len(items) - limit})" if len(items) > limit else "")

        lines = [f"{self.file}: {', '.join(self.formats) or 'no known format'}; {len(self.applied)} modules applied"]
        if self.unmatched:
            lines.append(f"unmatched ({len(self.unmatched)}): {few(self.unmatched)}")
        if self.partial:
            lines.append(f"partially applied ({len(self.partial)}): {few(f'{m} ({why})' for m, why in self.partial)}")
        if self.unused_keys:
            lines.append(f"unused tensors ({len(self.unused_keys)}): {few(self.unused_keys)}")
        lines.extend(self.notes)
        return "\n".join(lines)


@dataclass
class LoraPlan:
    patches: dict[str, TargetPatch]
    report: LoraReport
    trigger_words: str = ""


# ------------------------------------------------------------------------------ names


def _module_index(targets: dict[str, tuple]) -> tuple[dict[str, str], dict[str, str]]:
    """module name -> weight key, and underscore form -> module name, for every 2D+ weight of the model."""
    modules = {k[: -len(".weight")]: k for k in targets if k.endswith(".weight")}
    return modules, {m.replace(".", "_"): m for m in modules}


def _resolve(stem: str, modules: dict, underscored: dict) -> tuple[str | None, str | None, str]:
    """(module, qkv part letter or None, naming style) for a file's module name."""
    for prefix in UNDERSCORE_PREFIXES:
        if stem.startswith(prefix):
            return underscored.get(stem[len(prefix) :]), None, prefix.rstrip("_")
    name, style = stem, "plain"
    for prefix in MODULE_PREFIXES:
        if name.startswith(prefix):
            name, style = name[len(prefix) :], prefix.rstrip(".")
            break
    if name in modules:
        return name, None, style
    for pattern, template, part in _DIFFUSERS:
        m = pattern.match(name)
        if m:
            mapped = template.format(b=m.group(1), x=m.group(2) if m.lastindex > 1 else "")
            if mapped in modules:
                return mapped, (m.group(2) if part else None), "diffusers"
    return None, None, style


def _qkv_rows(letter: str, shape: tuple) -> tuple[int, int]:
    """Rows of the fused ``[q | k | v]`` weight: q has ``dim`` rows (heads * head_dim == dim), k and v the rest."""
    out, dim = shape[0], shape[1]
    kv = (out - dim) // 2
    return {"q": (0, dim), "k": (dim, dim + kv), "v": (dim + kv, out)}[letter]


# ------------------------------------------------------------------------------ scales


def _first_number(source: dict, names) -> float | None:
    for name in names:
        value = source.get(name)
        if value is None:
            continue
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return None


def _pattern_value(patterns: dict | None, module: str):
    """PEFT's ``rank_pattern``/``alpha_pattern``: a key matches a module name ending in it (regex allowed)."""
    for key, value in (patterns or {}).items():
        try:
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        except re.error:
            if module.endswith(key):
                return value
    return None


class _Scales:
    """Scale rules, with one note per assumption."""

    def __init__(self, lora: LoraFile, report: LoraReport):
        self.cfg = lora.adapter_config or {}
        self.meta = lora.metadata
        self.report = report
        self.noted: set[str] = set()
        if lora.adapter_config_path is not None:
            report.notes.append(f"read r/alpha from {lora.adapter_config_path.name}")

    def note(self, text: str) -> None:
        if text not in self.noted:
            self.noted.add(text)
            self.report.notes.append(text)

    def peft(self, module: str, rank: int, alpha_tensor) -> float:
        if alpha_tensor is not None:
            return float(alpha_tensor) / rank
        r = _pattern_value(self.cfg.get("rank_pattern"), module) or self.cfg.get("r")
        alpha = _pattern_value(self.cfg.get("alpha_pattern"), module) or self.cfg.get("lora_alpha")
        if alpha is None:
            alpha = _first_number(self.meta, ("lora_alpha", "alpha", "ss_network_alpha"))
            r = r or _first_number(self.meta, ("r", "lora_rank", "rank", "ss_network_dim"))
        if alpha is None:
            self.note("no adapter_config.json or alpha in the file: PEFT modules use scale 1 (alpha = r)")
            return 1.0
        r = float(r or rank)
        if self.cfg.get("use_rslora"):
            return float(alpha) / math.sqrt(r)
        return float(alpha) / r

    def lycoris(self, alpha_tensor, rank: int | None) -> float:
        if alpha_tensor is None or rank is None:
            return 1.0
        return float(alpha_tensor) / rank


# ------------------------------------------------------------------------------ planning


def _group(tensors: dict) -> tuple[dict[str, dict[str, str]], list[str]]:
    modules: dict[str, dict[str, str]] = {}
    unused = []
    for key in tensors:
        m = _SLOT_RE.match(key)
        if m is None:
            unused.append(key)
            continue
        modules.setdefault(m.group(1), {})[_SLOTS[m.group(2)]] = key
    return modules, unused


def _kind(slots: dict) -> str | None:
    if "lora_A" in slots and "lora_B" in slots or "lora_up" in slots and "lora_down" in slots:
        return "lora"
    if ("lokr_w1" in slots or "lokr_w1_a" in slots) and ("lokr_w2" in slots or "lokr_w2_a" in slots):
        return "lokr"
    if all(s in slots for s in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")):
        return "loha"
    if "diff" in slots or "diff_b" in slots:
        return "full"
    return None


_FORMAT_NAMES = {
    ("lora", "lora_A"): "PEFT lora_A/lora_B",
    ("lora", "lora_down"): "lora_down/lora_up",
    ("lokr", None): "LyCORIS LoKr",
    ("loha", None): "LyCORIS LoHa",
    ("full", None): "full diff",
}


def plan_lora(lora: LoraFile, targets: dict[str, tuple], block_strengths: str | dict | None = None) -> LoraPlan:
    """Map every module of ``lora`` onto ``targets`` (the model's parameter names -> shapes)."""
    report = LoraReport(lora.path.name)
    scales = _Scales(lora, report)
    multiplier = block_multiplier(block_strengths)
    modules, unused = _group(lora.tensors)
    report.unused_keys = sorted(unused)
    names, underscored = _module_index(targets)
    patches: dict[str, TargetPatch] = {}
    formats, styles = set(), set()
    for stem in sorted(modules):
        slots = modules[stem]
        kind = _kind(slots)
        if kind is None:
            report.partial.append((stem, f"no complete adapter (has {', '.join(sorted(slots))})"))
            continue
        module, letter, style = _resolve(stem, names, underscored)
        if module is None:
            report.unmatched.append(stem)
            continue
        target = names[module] if kind != "full" or "diff" in slots else module + ".bias"
        if kind == "full" and "diff" in slots and "diff_b" in slots:
            _add_full_bias(patches, stem, slots, lora, module, targets, report, multiplier)
        shape = targets.get(target)
        if shape is None:
            report.unmatched.append(stem)
            continue
        rows = _qkv_rows(letter, shape) if letter else None
        t = {s: lora.tensors[k] for s, k in slots.items()}
        left_out = [s for s in ("lora_mid", "lokr_t2", "hada_t1", "hada_t2") if s in t]
        if left_out:
            report.partial.append((stem, f"{', '.join(left_out)} (Tucker factors) not supported; module skipped"))
            continue
        scale = _part_scale(kind, t, module if style != "diffusers" else stem, scales)
        if kind == "full" and "diff" in slots:
            slots = {k: v for k, v in slots.items() if k != "diff_b"}  # the bias went into its own patch
        dora = "magnitude" if "magnitude" in slots else ("dora_scale" if "dora_scale" in slots else None)
        patch = patches.setdefault(target, TargetPatch(target, [], []))
        index = {}
        for s, k in slots.items():
            if s == "alpha":
                continue
            index[s] = len(patch.tensors)
            patch.tensors.append(lora.tensors[k])
        part = Part(stem, kind, index, scale, rows, multiplier(module))
        expected = (rows[1] - rows[0], *shape[1:]) if rows else tuple(shape)
        if dora:
            part.dora_axis = _dora_axis(t[dora], expected)
            if part.dora_axis is None:
                report.partial.append((stem, f"{dora} of shape {list(t[dora].shape)} fits no axis; module skipped"))
                patch.tensors = patch.tensors[: min(index.values())]
                _drop_if_empty(patches, target)
                continue
        got = _delta_shape(kind, t)
        if got is None or math.prod(got) != math.prod(expected) or got[0] != expected[0]:
            report.partial.append((stem, f"delta shape {got} does not fit {target} {list(expected)}; module skipped"))
            patch.tensors = patch.tensors[: min(index.values())]
            _drop_if_empty(patches, target)
            continue
        patch.parts.append(part)
        report.applied.append((stem, target + (f"[{rows[0]}:{rows[1]}]" if rows else "")))
        styles.add(style)
        formats.add(_FORMAT_NAMES[(kind, ("lora_A" if "lora_A" in t else "lora_down") if kind == "lora" else None)])
    report.formats = sorted(formats) + sorted(f"{s} names" for s in styles if s not in ("plain",))
    return LoraPlan(patches, report, trigger_words(lora.metadata))


def _part_scale(kind: str, t: dict, module: str, scales: _Scales) -> float:
    """The format's scale rule for one module (see the module docstring)."""
    alpha = t.get("alpha")
    if kind == "lora" and "lora_A" in t:
        return scales.peft(module, t["lora_A"].shape[0], alpha)
    if kind == "lora":
        return scales.lycoris(alpha, t["lora_down"].shape[0])
    if kind == "lokr":  # a decomposed factor sets the rank; two full factors: scale 1
        rank = t["lokr_w2_b"].shape[0] if "lokr_w2_b" in t else t["lokr_w1_b"].shape[0] if "lokr_w1_b" in t else None
        return scales.lycoris(alpha, rank)
    if kind == "loha":
        return scales.lycoris(alpha, t["hada_w1_b"].shape[0])
    return 1.0


def _delta_shape(kind: str, t: dict) -> tuple | None:
    """Shape of a part's delta from its factor shapes (no arithmetic); None when the factors do not chain."""

    def mm(a, b):
        return (a.shape[0], math.prod(b.shape[1:])) if math.prod(a.shape[1:]) == b.shape[0] else None

    if kind == "lora":
        up, down = (t["lora_B"], t["lora_A"]) if "lora_A" in t else (t["lora_up"], t["lora_down"])
        return mm(up.flatten(1), down.flatten(1))
    if kind == "lokr":
        w1 = tuple(t["lokr_w1"].shape) if "lokr_w1" in t else mm(t["lokr_w1_a"], t["lokr_w1_b"])
        w2 = tuple(t["lokr_w2"].shape) if "lokr_w2" in t else mm(t["lokr_w2_a"], t["lokr_w2_b"])
        return None if w1 is None or w2 is None or len(w1) != 2 or len(w2) != 2 else (w1[0] * w2[0], w1[1] * w2[1])
    if kind == "loha":
        a, b = mm(t["hada_w1_a"], t["hada_w1_b"]), mm(t["hada_w2_a"], t["hada_w2_b"])
        return a if a is not None and a == b else None
    return tuple((t["diff"] if "diff" in t else t["diff_b"]).shape)


def _drop_if_empty(patches: dict, target: str) -> None:
    if not patches[target].parts and not patches[target].tensors:
        del patches[target]


def _add_full_bias(patches, stem, slots, lora, module, targets, report, multiplier) -> None:
    target = module + ".bias"
    if target not in targets:
        report.partial.append((stem, "diff_b has no bias to patch"))
        return
    patch = patches.setdefault(target, TargetPatch(target, [], []))
    patch.parts.append(Part(stem, "full", {"diff_b": len(patch.tensors)}, 1.0, None, multiplier(module)))
    patch.tensors.append(lora.tensors[slots["diff_b"]])


def _dora_axis(scale: torch.Tensor, shape: tuple) -> str | None:
    if scale.numel() == shape[0] and (scale.dim() == 1 or scale.shape[0] == shape[0]):
        return "out"
    if len(shape) > 1 and scale.numel() == shape[1] and scale.dim() > 1 and scale.shape[0] == 1:
        return "in"
    return None


# ------------------------------------------------------------------------------ block strengths

_GROUPS = {
    "refiners": ("noise_refiner.", "context_refiner."),
    "noise_refiner": ("noise_refiner.",),
    "context_refiner": ("context_refiner.",),
    "layers": ("layers.",),
    "embedders": ("x_embedder", "t_embedder.", "cap_embedder.", "time_text_embed.", "clip_text_pooled_proj."),
    "final": ("final_layer.",),
}
_RANGE = re.compile(r"^layers\.(\d+)(?:-(\d+))?$")


def block_multiplier(spec: str | dict | None):
    """``"refiners=0.5, layers.0-11=0.8, final=0"`` -> module name -> multiplier (1 where nothing matches).

    Later entries win. Groups: refiners, noise_refiner, context_refiner, layers, layers.N, layers.A-B,
    embedders, final.
    """
    if not spec:
        return lambda module: 1.0
    entries = []
    items = spec.items() if isinstance(spec, dict) else (e.split("=", 1) for e in str(spec).split(",") if e.strip())
    for item in items:
        if len(item) != 2:
            raise ConfigError(f"block strength {'='.join(item)!r}: write GROUP=NUMBER, e.g. refiners=0.5")
        name, value = (str(x).strip() for x in item)
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"block strength {name}={value!r}: {value!r} is not a number") from None
        if name in _GROUPS:
            prefixes = _GROUPS[name]
            entries.append((lambda m, p=prefixes: m.startswith(p), number))
        elif (r := _RANGE.match(name)) is not None:
            lo, hi = int(r.group(1)), int(r.group(2) or r.group(1))
            entries.append((lambda m, lo=lo, hi=hi: _layer_in(m, lo, hi), number))
        else:
            raise ConfigError(
                f"block strength group {name!r} is unknown; use one of: {', '.join(_GROUPS)}, layers.N, layers.A-B"
            )

    def multiplier(module: str) -> float:
        value = 1.0
        for matches, number in entries:
            if matches(module):
                value = number
        return value

    return multiplier


def _layer_in(module: str, lo: int, hi: int) -> bool:
    m = re.match(r"^layers\.(\d+)\.", module)
    return m is not None and lo <= int(m.group(1)) <= hi


# ------------------------------------------------------------------------------ trigger words


def trigger_words(metadata: dict[str, str], most: int = 12) -> str:
    """Trigger words from the file: ``modelspec.trigger_phrase``, trainer trigger keys, else the most frequent
    kohya ``ss_tag_frequency`` tags. XML fragments (NewBie LoRAs captioned in XML) are kept verbatim."""
    for key in ("modelspec.trigger_phrase", "trigger_phrase", "trigger_words", "ss_trigger_words", "trigger_word"):
        value = (metadata.get(key) or "").strip()
        if value:
            return value
    raw = metadata.get("ss_tag_frequency")
    if not raw:
        return ""
    try:
        datasets = json.loads(raw)
    except ValueError:
        return ""
    counts: dict[str, int] = {}
    for tags in datasets.values() if isinstance(datasets, dict) else ():
        for tag, n in (tags or {}).items():
            counts[tag.strip()] = counts.get(tag.strip(), 0) + int(n)
    ranked = sorted(counts, key=lambda t: (-counts[t], t))
    return ", ".join(t for t in ranked[:most] if t)


# ------------------------------------------------------------------------------ applying (standalone pipeline)


def model_targets(model: torch.nn.Module) -> dict[str, tuple]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


@torch.no_grad()
def apply_lora(model: torch.nn.Module, path, strength: float = 1.0, block_strengths=None) -> LoraPlan:
    """Merge a LoRA file into ``model``'s weights in place (each weight patched once, in float32)."""
    plan = plan_lora(read_lora(path), model_targets(model), block_strengths)
    if not plan.patches:
        raise CheckpointError(f"{path}: no module of this LoRA matches the model\n{plan.report.summary()}")
    params = dict(model.named_parameters())
    for target, patch in plan.patches.items():
        p = params[target]
        p.copy_(patch.apply(p.data, strength).to(p.dtype))
    log.log(logging.INFO if plan.report.complete else logging.WARNING, "LoRA %s", plan.report.summary())
    return plan


def parse_lora_arg(text: str) -> tuple[Path, float]:
    """``FILE[:STRENGTH]`` (the CLI's ``--lora``), checked before any model loads."""
    path, strength = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head and re.fullmatch(r"[-+]?\d*\.?\d+(e[-+]?\d+)?", tail.strip(), re.I):
        path, strength = head, float(tail)
    lora = Path(path)
    header = read_header(lora)  # exists, is safetensors, not truncated: or a CheckpointError naming it
    if not any(_SLOT_RE.match(k) for k in header.tensors):
        from .file_kinds import LORA, wrong_file_hint

        hint = wrong_file_hint(LORA, {k: v.shape for k, v in header.tensors.items()})
        raise CheckpointError(
            f"{lora}: no LoRA tensors (lora_A/B, lora_up/down, lokr_*, hada_*, diff) in this file{hint}"
        )
    return lora, strength
