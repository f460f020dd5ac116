"""Character regions in ComfyUI: spans on the CONDITIONING, a node to set boxes/masks, the cond our MODEL reads.

NewBie Text Encode records where each ``<character_N>`` sits in the Gemma tokens
(``newbie_spans``) and any XML ``<region>`` boxes (``newbie_regions``); NewBie Character
Regions adds or overrides boxes and masks. Our MODEL turns them into the joint-attention mask
(``newbie_core.regions``) inside the sampler, so every sampler (stock ones included) uses them.
The uncond half of CFG is never masked. The maths is in ``newbie_core``; this is glue.
"""

from __future__ import annotations

import comfy.conds
import torch

from ..newbie_core.layout import RegionError, parse_layers, parse_region_lines
from ..newbie_core.regions import (
    OUTSIDE_POLICIES,
    RegionalAttention,
    RegionSettings,
    SampleRegions,
    check_regions,
    token_spans,
)
from ..newbie_core.text.tokenizers import SentencePieceTokenizer
from ._api import io, schema

SPANS_KEY = "newbie_spans"
REGIONS_KEY = "newbie_regions"
SETTINGS_KEY = "newbie_region_settings"
MODEL_KEY = "newbie_regions"  # the model kwarg
MASK_INPUTS = 4


# ----------------------------------------------------------------------------- spans at encode time


def _offsets_tokenizer(clip):
    """A newbie_core tokenizer that reports offsets for ``clip``'s Gemma tokenizer, or None."""
    tok = getattr(clip.tokenizer, "gemma", None)
    if hasattr(tok, "encode_with_offsets"):
        return tok
    inner = getattr(tok, "tokenizer", None)  # core: SPieceTokenizer -> sentencepiece processor
    sp = getattr(inner, "tokenizer", None)
    if sp is None or not hasattr(sp, "serialized_model_proto"):
        return None
    cached = getattr(inner, "_newbie_offsets", None)
    if cached is None:
        cached = SentencePieceTokenizer(
            sp.serialized_model_proto(), add_bos=bool(getattr(inner, "add_bos", True)), add_eos=False
        )
        inner._newbie_offsets = cached
    return cached


def prompt_spans(clip, prompt: str, system_prefix: str, gemma_ids: list[int]):
    """PromptSpans for the tokens the CLIP really encoded, or None if they cannot be matched."""
    tok = _offsets_tokenizer(clip)
    if tok is None:
        return None
    try:
        ids, spans = token_spans(tok, prompt, system_prefix, limit=len(gemma_ids))
    except NotImplementedError:
        return None
    return spans if ids == list(gemma_ids) else None


def attach(conditioning, **extra):
    """A copy of a CONDITIONING list with ``extra`` added to every entry's dict."""
    return [[c[0], {**c[1], **extra}] for c in conditioning]


# ----------------------------------------------------------------------------- what the model reads


class RegionBatch:
    """Per-sample layouts of one model call (None = unmasked) and their settings; not a list, so ComfyUI
    passes it through to the model untouched.

    ComfyUI rebuilds the batch's cond objects on every step, so the RegionalAttention of each batch
    composition (and with it the key bias it builds, up to ~150 MiB at 1024²) is kept in a small store
    shared by every RegionBatch derived from the same sampling run's cond; it goes when that cond goes.
    """

    STORE_SIZE = 4  # batch compositions per run: cond+uncond together, or apart when memory splits them

    def __init__(self, samples: list[SampleRegions | None], settings: RegionSettings, store: dict | None = None):
        self.samples = samples
        self.settings = settings
        self.store = {} if store is None else store

    def derived(self, samples: list[SampleRegions | None]) -> RegionBatch:
        return RegionBatch(samples, self.settings, self.store)

    def for_call(self, sigma: torch.Tensor, cond_or_uncond=None) -> RegionalAttention | None:
        samples = list(self.samples)
        if cond_or_uncond and len(samples) % len(cond_or_uncond) == 0:
            per = len(samples) // len(cond_or_uncond)
            for chunk, kind in enumerate(cond_or_uncond):
                if kind == 1:  # CFG's uncond: never masked
                    samples[chunk * per : (chunk + 1) * per] = [None] * per
        key = tuple(map(id, samples))  # the stored RegionalAttention keeps these objects alive: ids stay unique
        regions = self.store.get(key)
        if regions is None:
            regions = RegionalAttention(samples, self.settings)
            while len(self.store) >= self.STORE_SIZE:
                self.store.pop(next(iter(self.store)))
            self.store[key] = regions
        t = 1.0 - float(sigma.flatten()[0])
        return regions if regions.active_at(t) else None


class RegionCond(comfy.conds.CONDRegular):
    """Carries a :class:`RegionBatch`; concatenates with any other RegionCond of equal settings."""

    def process_cond(self, batch_size, **kwargs):
        samples = self.cond.samples
        return self._copy_with(self.cond.derived(samples * max(1, batch_size // len(samples))))

    def can_concat(self, other):
        return self.cond.settings == other.cond.settings

    def concat(self, others):
        samples = list(self.cond.samples)
        for o in others:
            samples += o.cond.samples
        return self.cond.derived(samples)

    def size(self):
        return [1]


def region_cond(kwargs) -> RegionCond:
    """The model cond for one CONDITIONING entry (always present, so entries with and without regions batch)."""
    spans = kwargs.get(SPANS_KEY)
    areas = kwargs.get(REGIONS_KEY) or {}
    settings = kwargs.get(SETTINGS_KEY) or RegionSettings()
    sample = SampleRegions(dict(spans.characters), dict(areas)) if spans is not None and areas else None
    return RegionCond(RegionBatch([sample], settings))


# ----------------------------------------------------------------------------- the node


def _check_lines(text: str) -> str | None:
    try:
        parse_region_lines(text)
    except RegionError as exc:
        return f"NewBie Character Regions: regions {exc}"
    return None


class NewBieRegions(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        masks = [
            io.Mask.Input(
                f"mask_{i}",
                optional=True,
                tooltip=f"Where character_{i} goes (white = there); overrides its box. Any resolution.",
            )
            for i in range(1, MASK_INPUTS + 1)
        ]
        return schema(
            node_id="NewBieRegions",
            display_name="NewBie Character Regions",
            category="NewBie/conditioning",
            search_aliases=["newbie", "regional prompt", "layout", "bbox", "region"],
            description="Places each <character_N> of the prompt in its own box or mask: image tokens inside the region "
            "attend to that character's text and to the shared text (system prompt, general tags, caption); the "
            "others do not. Applied by the NewBie model inside any sampler; the negative prompt is never masked.",
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="Positive conditioning from NewBie Text Encode."),
                io.String.Input(
                    "regions",
                    multiline=True,
                    default="character_1=0,0,500,1000\ncharacter_2=500,0,1000,1000",
                    tooltip="One character_N=x0,y0,x1,y1 per line, in 0-1000 units of width/height (x right, y "
                    "down). Overrides <region> tags of the prompt. Empty: keep the prompt's own regions.",
                ),
                io.Combo.Input(
                    "outside",
                    options=list(OUTSIDE_POLICIES),
                    default="shared",
                    tooltip="Image outside every region sees: shared = only the shared text (default: no character "
                    "leaks into the background), all = every character.",
                ),
                io.Float.Input(
                    "until",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Apply while t < until (t = 0 is noise). Layout forms early; e.g. 0.5 frees the details.",
                ),
                io.Float.Input(
                    "soft_edge",
                    default=0.0,
                    min=0.0,
                    max=1000.0,
                    step=1.0,
                    tooltip="Feather width of box edges in 0-1000 units (0 = hard edges).",
                ),
                *masks,
                io.String.Input(
                    "layers",
                    default="all",
                    optional=True,
                    tooltip="Main layers to mask, e.g. 0-17 (0-based; the released model has 36); all = every layer.",
                ),
            ],
            outputs=[io.Conditioning.Output(tooltip="The conditioning with regions attached.")],
        )

    @classmethod
    def validate_inputs(cls, regions: str = "", layers: str = "all", **kwargs) -> bool | str:
        problem = _check_lines(regions) if isinstance(regions, str) else None
        if problem is None and isinstance(layers, str):
            try:
                parse_layers(layers)
            except RegionError as exc:
                problem = f"NewBie Character Regions: {exc}"
        return problem or True

    @classmethod
    def execute(
        cls, conditioning, regions: str, outside: str, until: float, soft_edge: float, layers: str = "all", **masks
    ):
        problem = _check_lines(regions)
        if problem:
            raise ValueError(problem)
        try:
            settings = RegionSettings(outside, float(soft_edge), float(until), parse_layers(layers))
            settings.validate()
        except RegionError as exc:
            raise ValueError(f"NewBie Character Regions: {exc}") from None
        override = dict(parse_region_lines(regions))
        for i in range(1, MASK_INPUTS + 1):
            mask = masks.get(f"mask_{i}")
            if mask is not None:
                override[i] = mask.detach().float().cpu()
        out = []
        for c in conditioning:
            spans = c[1].get(SPANS_KEY)
            if spans is None:
                raise ValueError(
                    "NewBie Character Regions: the conditioning has no character token spans; encode the prompt "
                    "with NewBie Text Encode (it records where each <character_N> is)"
                )
            areas = {**(c[1].get(REGIONS_KEY) or {}), **override}
            try:
                check_regions(areas, spans)
            except RegionError as exc:
                raise ValueError(f"NewBie Character Regions: {exc}") from None
            out.append([c[0], {**c[1], REGIONS_KEY: areas, SETTINGS_KEY: settings}])
        return io.NodeOutput(out)


NODES = [NewBieRegions]
