"""Regional attention: each character's caption tokens are seen only by the image tokens of its region.

NewBie's Next-DiT runs caption and image tokens through one joint attention, so regional control
is a key mask on the main layers: an image token inside region *i* attends to character *i*'s
tokens and to every shared token (BOS, system prompt, caption, general tags, characters without
a region, every image token); it does not attend to the tokens of characters whose region it is
outside. Caption tokens attend as before.

Outside every region (policy ``outside``):

* ``"shared"`` (default): such image tokens see the shared tokens only, so the background is
  conditioned on the scene and not on any character.
* ``"all"``: they see every character (the unmasked model's behaviour there).

Measured with ``benchmarks/bench_regions.py`` (8 seeded random 8-layer DiTs; a proxy, no real
weights here): when only character 2's text changes, the background moves 0.54x as much as
without regions under ``shared`` but 0.97x under ``all`` (characters leak into the background),
while the leakage into character 1's region is the same for both (0.79x / 0.80x). The price of
``shared`` is a background 7% further from the unmasked model's (1% for ``all``). Keeping
characters where the user put them is the point of regions, hence the default.

Token spans come from the tokenizer's character offsets (:func:`token_spans`), so they are exact
for any system-prompt prefix, escapes, sub-word merges across tag boundaries and the 512-token
cut. The mask is one additive bias ``[B, 1, S, S]`` in the compute dtype, built once per shape
(vectorised, no per-token loops) and shared by every masked layer and head; a mask that masks
nothing (e.g. every region full-frame) is not built at all, so that case runs the unmasked
kernels and is bit-identical to no regions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .layout import SCALE, Box, RegionError
from .xml_prompt.parser import Element, parse_tree
from .xml_prompt.schema import CHARACTER_TAG

OUTSIDE_POLICIES = ("shared", "all")

Span = tuple[int, int]


# ----------------------------------------------------------------------------- token spans


@dataclass(frozen=True)
class PromptSpans:
    """Token ranges ``[start, end)`` in the Gemma input (BOS at 0) of each part of one prompt.

    ``system`` covers BOS and the system prompt; ``characters`` maps N to ``<character_N>``;
    ``truncated`` lists characters whose block was cut (wholly or partly) by the token limit.
    """

    length: int
    system: Span
    characters: dict[int, Span] = field(default_factory=dict)
    general_tags: Span | None = None
    caption: Span | None = None
    truncated: tuple[int, ...] = ()


def block_ranges(prompt: str) -> dict[str, Span]:
    """Character ranges of the top-level blocks of an XML prompt (inside a root ``<image>`` too)."""
    out: dict[str, Span] = {}

    def walk(nodes):
        for node in nodes:
            if not isinstance(node, Element):
                continue
            if CHARACTER_TAG.match(node.tag) or node.tag in ("general_tags", "caption"):
                out.setdefault(node.tag, (node.start, node.end))
            elif node.tag == "image":
                walk(node.children)

    try:
        walk(parse_tree(prompt))
    except ValueError:  # not XML we can read: no blocks, everything shared
        return {}
    return out


def _owner_by_text(text: str, offsets: list[Span], blocks: dict[str, Span]) -> list[str | None]:
    """Each token's block: the one holding most of its non-space characters (None: spaces/specials only)."""
    dense = [0]
    for ch in text:
        dense.append(dense[-1] + (not ch.isspace()))

    def solid(a: int, b: int) -> int:
        a, b = max(a, 0), min(b, len(text))
        return dense[b] - dense[a] if b > a else 0

    owners: list[str | None] = []
    for span in offsets:
        if span is None:  # BOS/EOS
            owners.append(None)
            continue
        s, e = span
        best, best_n = None, 0
        for name, (bs, be) in blocks.items():
            n = solid(max(s, bs), min(e, be))
            if n > best_n:
                best, best_n = name, n
        owners.append(best)
    return owners


def token_spans(tokenizer, prompt: str, system_prefix: str = "", limit: int | None = None):
    """``(ids, PromptSpans)`` for Gemma text ``system_prefix + prompt`` cut at ``limit`` tokens.

    ``ids`` equal ``tokenizer.encode(system_prefix + prompt)[:limit]``; padding never matters
    because the DiT places each sample's valid caption tokens first.
    """
    text = system_prefix + prompt
    ids, offsets = tokenizer.encode_with_offsets(text)
    shift = len(system_prefix)
    blocks = {name: (s + shift, e + shift) for name, (s, e) in block_ranges(prompt).items()}
    if shift:
        blocks["system"] = (0, shift)
    owners = _owner_by_text(text, offsets, blocks)
    full = len(ids)
    n = full if limit is None else min(full, limit)
    ranges: dict[str, list[int]] = {}
    for k, name in enumerate(owners):
        if name is not None:
            r = ranges.setdefault(name, [k, k + 1])
            r[1] = k + 1
    clipped = {name: (min(a, n), min(b, n)) for name, (a, b) in ranges.items()}
    characters, truncated = {}, []
    for name, (a, b) in sorted(clipped.items()):
        m = CHARACTER_TAG.match(name)
        if not m:
            continue
        if b > a:
            characters[int(m.group(1))] = (a, b)
        if ranges[name][1] > n:
            truncated.append(int(m.group(1)))
    bos = 1 if n and offsets[0] is None else 0
    system_end = max(clipped.get("system", (0, 0))[1], bos)

    def maybe(name):
        span = clipped.get(name)
        return span if span and span[1] > span[0] else None

    spans = PromptSpans(
        n, (0, min(system_end, n)), characters, maybe("general_tags"), maybe("caption"), tuple(sorted(truncated))
    )
    return ids[:n], spans


# ----------------------------------------------------------------------------- settings and layouts


@dataclass(frozen=True)
class RegionSettings:
    """How regions are applied. ``until``: only while t < until (t = 0 is noise; layout forms early).

    ``soft_edge``: feather width in 0-1000 units (image tokens that far outside a box still see
    the character, with attention weight falling linearly to 0). ``layers``: main-layer indices
    to mask (None = all).
    """

    outside: str = "shared"
    soft_edge: float = 0.0
    until: float = 1.0
    layers: tuple[int, ...] | None = None

    def validate(self) -> None:
        if self.outside not in OUTSIDE_POLICIES:
            raise RegionError(
                f"outside policy {self.outside!r} is unknown; choose one of: {', '.join(OUTSIDE_POLICIES)}"
            )
        if not 0 <= self.soft_edge <= SCALE:
            raise RegionError(f"soft edge {self.soft_edge} is outside 0-{SCALE}")
        if not 0 <= self.until <= 1:
            raise RegionError(f"until {self.until} is outside 0-1 (t = 0 is noise, 1 the image)")


Area = Box | torch.Tensor  # a box in 0-1000 units or a mask [H, W] with values in [0, 1] at any resolution


@dataclass
class SampleRegions:
    """One sample's layout: character N's token span and its area. Characters lacking either are shared."""

    spans: dict[int, Span]
    areas: dict[int, Area]

    def participants(self) -> list[int]:
        return sorted(i for i in self.areas if i in self.spans and self.spans[i][1] > self.spans[i][0])


def check_regions(regions: dict[int, object], spans: PromptSpans) -> None:
    """Every region must name a character the (encoded) prompt has."""
    for index in sorted(regions):
        if index in spans.characters:
            continue
        if index in spans.truncated:
            raise RegionError(
                f"character_{index} has a region but its block was cut off by the {spans.length}-token limit"
            )
        have = ", ".join(f"character_{i}" for i in sorted(spans.characters)) or "no character blocks"
        raise RegionError(f"character_{index} has a region but the prompt has no <character_{index}> (it has {have})")


def area_weights(area: Area, grid_h: int, grid_w: int, soft_edge: float = 0.0) -> torch.Tensor:
    """Weight in [0, 1] of each image token (row-major ``[grid_h * grid_w]``) for one region."""
    if isinstance(area, Box):
        cy = (torch.arange(grid_h, dtype=torch.float64) + 0.5) * (SCALE / grid_h)
        cx = (torch.arange(grid_w, dtype=torch.float64) + 0.5) * (SCALE / grid_w)
        dy = torch.clamp(torch.maximum(area.y0 - cy, cy - area.y1), min=0)[:, None]
        dx = torch.clamp(torch.maximum(area.x0 - cx, cx - area.x1), min=0)[None, :]
        inside = ((cy >= area.y0) & (cy < area.y1))[:, None] & ((cx >= area.x0) & (cx < area.x1))[None, :]
        w = inside.double()
        if soft_edge > 0:
            w = torch.where(inside, w, torch.clamp(1 - torch.maximum(dx, dy) / soft_edge, min=0))
        return w.reshape(-1).float()
    mask = torch.as_tensor(area).float()
    while mask.ndim > 2:
        mask = mask[0]
    mask = F.adaptive_avg_pool2d(mask[None, None].cpu(), (grid_h, grid_w))[0, 0]
    return mask.clamp(0, 1).reshape(-1)


class RegionalAttention:
    """Per-sample layouts of a batch (None = unmasked sample, e.g. CFG's uncond) plus the settings.

    Passed to ``NextDiT.forward(regions=...)``; the model asks :meth:`joint_bias` once per call.
    """

    def __init__(self, samples: list[SampleRegions | None], settings: RegionSettings | None = None):
        self.samples = list(samples)
        self.settings = settings or RegionSettings()
        self.settings.validate()
        self._cache: tuple | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def active_at(self, t: float) -> bool:
        return float(t) < self.settings.until and any(s is not None and s.participants() for s in self.samples)

    def applies_to_layer(self, index: int) -> bool:
        return self.settings.layers is None or index in self.settings.layers

    def image_caption_weights(self, cap_lens: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor | None:
        """``[B, n_img, L]`` attention weight (1 = as before, 0 = masked) of image tokens on caption tokens."""
        b = len(self.samples)
        if cap_lens.shape[0] != b:
            raise ValueError(f"regions were given for {b} samples, the batch has {cap_lens.shape[0]}")
        lens = [int(v) for v in cap_lens.tolist()]
        n_cap = max(lens)
        n_img = grid_h * grid_w
        layouts = [(s, s.participants()) if s is not None else (None, []) for s in self.samples]
        r = max((len(p) for _, p in layouts), default=0)
        if r == 0:
            return None
        weights = torch.zeros(b, r + 1, n_img)
        weights[:, r] = 1.0  # slot r: shared tokens
        owner = torch.full((b, n_cap), r, dtype=torch.long)
        for i, (sample, parts) in enumerate(layouts):
            for slot, char in enumerate(parts):
                weights[i, slot] = area_weights(sample.areas[char], grid_h, grid_w, self.settings.soft_edge)
                start, end = sample.spans[char]
                owner[i, min(start, lens[i]) : min(end, lens[i])] = slot
        w = weights.gather(1, owner[:, :, None].expand(b, n_cap, n_img)).transpose(1, 2)  # [B, n_img, L]
        if self.settings.outside == "all":
            outside = weights[:, :r].amax(1) <= 0  # [B, n_img]
            w = torch.where(outside[:, :, None], torch.ones_like(w), w)
        return w

    def joint_bias(self, cap_lens, grid_h: int, grid_w: int, seq: int, dtype, device) -> torch.Tensor | None:
        """Additive key bias ``[B, 1, seq, seq]`` for the joint sequence, or None when it masks nothing.

        Joint layout per sample (as the model builds it): ``[cap_len_i caption | n_img image | padding]``;
        padding keys are masked here too, so the bias replaces the model's key mask.
        """
        key = (tuple(cap_lens.tolist()), grid_h, grid_w, seq, dtype, str(device))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        bias = self._build(cap_lens, grid_h, grid_w, seq, dtype, device)
        self._cache = (key, bias)
        return bias

    def _build(self, cap_lens, grid_h, grid_w, seq, dtype, device):
        w = self.image_caption_weights(cap_lens.cpu(), grid_h, grid_w)
        if w is None or bool((w == 1).all()):
            return None
        b, n_img, n_cap = w.shape
        low = torch.finfo(dtype).min  # finite: no NaN even in kernels that add the bias in low precision
        block = w.to(device).log().clamp_min(low).to(dtype)  # 0 unchanged, `low` masked, log(weight) on soft edges
        lens = cap_lens.to(device)[:, None]
        pos = torch.arange(seq, device=device)[None, :]
        row = pos - lens  # image token index of each joint row
        is_img = (row >= 0) & (row < n_img)
        rows = torch.cat([block, block.new_zeros(b, 1, n_cap)], dim=1)
        rows = rows.gather(1, torch.where(is_img, row, n_img)[:, :, None].expand(b, seq, n_cap))
        # a row padded to a multiple of 8 keeps memory-efficient SDPA kernels from copying the bias
        padded = -(-seq // 8) * 8
        bias = torch.zeros(b, 1, seq, padded, dtype=dtype, device=device)[..., :seq]
        bias[:, 0, :, :n_cap] = rows
        key_valid = pos < lens + n_img
        bias.masked_fill_(~key_valid[:, None, None, :], low)
        return bias


# ----------------------------------------------------------------------------- from a prompt


@dataclass
class PromptLayout:
    """A prompt ready for the encoders: text without region tags, Gemma ids, spans and the boxes in force."""

    text: str
    gemma_ids: list[int] | None  # None when there are no boxes
    spans: PromptSpans | None
    boxes: dict[int, Box]

    def sample(self) -> SampleRegions | None:
        return SampleRegions(dict(self.spans.characters), dict(self.boxes)) if self.boxes else None


def prompt_layout(
    tokenizer,
    prompt: str,
    system_prefix_for,
    overrides: dict[int, Box] | None = None,
    keep_tags: bool = False,
    limit: int | None = None,
    prepare=None,
) -> PromptLayout:
    """XML ``<region>`` boxes merged with ``overrides`` (which win), checked against the encoded prompt.

    ``prepare(text)`` rewrites the stripped text as the encoders get it (e.g. escape handling);
    ``system_prefix_for(text)`` gives the Gemma system prompt for it. Raises RegionError for a
    region whose character the prompt lacks (or the token limit cut off).
    """
    from .xml_prompt import extract_regions

    text, boxes = extract_regions(prompt, keep_tags)
    if prepare is not None:
        text = prepare(text)
    boxes = {**boxes, **(overrides or {})}
    if not boxes:  # nothing to place: no offsets needed (any tokenizer works)
        return PromptLayout(text, None, None, {})
    try:
        ids, spans = token_spans(tokenizer, text, system_prefix_for(text), limit)
    except NotImplementedError as exc:
        raise RegionError(f"regions need token offsets: {exc}") from None
    check_regions(boxes, spans)
    return PromptLayout(text, ids, spans, boxes)


def boxes_to_json(boxes: dict[int, Box]) -> dict[str, list[float]]:
    return {f"character_{i}": boxes[i].as_list() for i in sorted(boxes)}


# ----------------------------------------------------------------------------- GenerationSettings checks
# Registered with the shared validator, so the pipeline and every CLI command check region fields the same way.

from . import validation  # noqa: E402
from .defaults import Range  # noqa: E402
from .errors import ConfigError  # noqa: E402


def _layout_check(convert):
    def check(value, label, _settings):
        try:
            convert(value)
        except RegionError as exc:
            raise ConfigError(f"{label}: {exc}") from None

    return check


def _boxes(value):
    from .layout import parse_box, parse_character_name

    for name, box in (value or {}).items():
        try:
            parse_character_name(name)
            parse_box(box)
        except RegionError as exc:
            raise RegionError(f"{name} {exc}") from None


def _layers(value):
    from .layout import parse_layers

    parse_layers(value)


validation.setting_check("regions")(_layout_check(_boxes))
validation.setting_check("region_layers")(_layout_check(_layers))


@validation.setting_check("region_outside")
def _outside(value, label, _settings):
    validation.choice(label, value, OUTSIDE_POLICIES)


@validation.setting_check("region_until")
def _until(value, label, _settings):
    validation.finite(label, value, Range(0.0, 1.0))


@validation.setting_check("region_soft_edge")
def _soft_edge(value, label, _settings):
    validation.finite(label, value, Range(0.0, float(SCALE)))
