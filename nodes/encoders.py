"""Text-encoder loader and the training-faithful NewBie text encode node."""

from __future__ import annotations

import logging

import folder_paths

from ..newbie_core.dtypes import node_dtype_options
from ..newbie_core.errors import NewBieError
from ..newbie_core.layout import RegionError
from ..newbie_core.regions import check_regions
from ..newbie_core.text.conditioning import ESCAPE_MODES, PRESETS, apply_escapes, system_prompt_for
from ..newbie_core.xml_prompt import XMLPromptError, extract_regions
from . import regions
from ._api import io, schema
from .comfy_text import is_newbie_clip, load_newbie_clip, newbie_tokens

log = logging.getLogger("newbie")


def _sorted_by_hint(names: list[str], hint: str) -> list[str]:
    return sorted(names, key=lambda n: (hint not in n.lower(), n.lower()))


class NewBieTextEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        names = folder_paths.get_filename_list("text_encoders")
        return schema(
            node_id="NewBieTextEncoderLoader",
            display_name="Load NewBie Text Encoders",
            category="NewBie/loaders",
            search_aliases=["newbie", "gemma", "jina", "clip loader"],
            description="Loads Gemma3-4B-it and Jina CLIP v2 with this pack's encoders and returns a standard CLIP: "
            "CLIPTextEncode and the conditioning nodes work with it; NewBie Text Encode adds the training-time prompt split.",
            inputs=[
                io.Combo.Input(
                    "gemma_name",
                    options=_sorted_by_hint(names, "gemma"),
                    tooltip="Gemma3-4B-it text encoder in models/text_encoders (e.g. gemma_3_4b_it_bf16.safetensors).",
                ),
                io.Combo.Input(
                    "jina_name",
                    options=_sorted_by_hint(names, "jina"),
                    tooltip="Jina CLIP v2 text encoder in models/text_encoders (e.g. jina_clip_v2_bf16.safetensors).",
                ),
                io.Combo.Input(
                    "dtype",
                    options=node_dtype_options(include_fp8=False),
                    default="default",
                    tooltip="Weight dtype. default: bf16 on GPUs that support it, else fp32. fp16 can overflow in Gemma.",
                ),
                io.Combo.Input(
                    "device",
                    options=["default", "cpu"],
                    default="default",
                    tooltip="default: ComfyUI's text-encoder device; cpu keeps the 8 GB Gemma off the GPU.",
                ),
            ],
            outputs=[io.Clip.Output(tooltip="Both encoders as one CLIP; offloaded by ComfyUI after encoding.")],
        )

    @classmethod
    def execute(cls, gemma_name: str, jina_name: str, dtype: str, device: str) -> io.NodeOutput:
        gemma = folder_paths.get_full_path_or_raise("text_encoders", gemma_name)
        jina = folder_paths.get_full_path_or_raise("text_encoders", jina_name)
        try:
            return io.NodeOutput(load_newbie_clip(gemma, jina, dtype, device))
        except NewBieError as exc:
            raise ValueError(f"NewBie text encoders: {exc}") from None


class NewBieTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="NewBieTextEncode",
            display_name="NewBie Text Encode",
            category="NewBie/conditioning",
            search_aliases=["newbie", "prompt", "text encode", "xml"],
            description="Encodes a prompt the way NewBie was trained: the system prompt goes to Gemma only, Jina sees "
            "the bare prompt, Gemma is cut at 512 tokens. Works with this pack's CLIP and with core's DualCLIPLoader (newbie).",
            inputs=[
                io.Clip.Input(
                    "clip", tooltip="A NewBie CLIP: 'Load NewBie Text Encoders' or DualCLIPLoader with type newbie."
                ),
                io.String.Input(
                    "text",
                    multiline=True,
                    dynamic_prompts=True,
                    tooltip="The prompt: NewBie XML, Danbooru tags or natural language. No (tag:1.2) weight syntax: "
                    "parentheses are plain text. A1111-style \\( \\) escapes become ( ) (see escapes).",
                ),
                io.Combo.Input(
                    "system_prompt",
                    options=PRESETS,
                    default="auto",
                    tooltip="System prompt for Gemma. auto: the training XML prompt for XML, the tag prompt otherwise; "
                    "negative: the low-quality prompt for negatives; none: no system prompt; custom: the text below.",
                ),
                io.String.Input(
                    "custom_system_prompt",
                    multiline=True,
                    default="",
                    optional=True,
                    tooltip="Used when system_prompt is custom; prepended to the prompt for Gemma only.",
                ),
                io.Combo.Input(
                    "escapes",
                    options=ESCAPE_MODES,
                    default="unescape",
                    optional=True,
                    tooltip="unescape: \\(medium\\) reaches both encoders as (medium), as ComfyUI core does and as "
                    "training captions look (they never contain those backslashes). literal: the text exactly as "
                    "typed, backslashes included.",
                ),
                io.Boolean.Input(
                    "keep_region_tags",
                    default=False,
                    optional=True,
                    tooltip="<region> tags are layout data (see NewBie Character Regions) and are removed from the "
                    "text the encoders see; on: leave them in the text.",
                ),
            ],
            outputs=[
                io.Conditioning.Output(tooltip="Gemma states + Jina pooled_output + attention_mask, as core's NewBie.")
            ],
        )

    @classmethod
    def execute(
        cls,
        clip,
        text: str,
        system_prompt: str,
        custom_system_prompt: str = "",
        escapes: str = "unescape",
        keep_region_tags: bool = False,
    ) -> io.NodeOutput:
        if clip is None or not is_newbie_clip(clip):
            raise ValueError(
                "NewBie Text Encode needs a NewBie CLIP: use 'Load NewBie Text Encoders' or DualCLIPLoader with type newbie"
            )
        try:
            text, boxes = extract_regions(text, keep_region_tags)
        except XMLPromptError as exc:
            raise ValueError(f"NewBie Text Encode: prompt {exc}") from None
        text = apply_escapes(text, escapes)
        prefix = system_prompt_for(text, system_prompt, custom_system_prompt)
        tokens, dropped = newbie_tokens(clip, prefix + text, text)
        if dropped:
            log.warning(
                "NewBie Text Encode: the Gemma prompt was longer than the 512 tokens used in training; "
                "the last %d tokens were dropped",
                dropped,
            )
        cond = clip.encode_from_tokens_scheduled(tokens)
        spans = regions.prompt_spans(clip, text, prefix, [t[0] for t in tokens["gemma"][0]])
        if boxes and spans is None:
            raise ValueError("NewBie Text Encode: <region> needs token offsets this CLIP's tokenizer cannot give")
        if boxes:
            try:
                check_regions(boxes, spans)
            except RegionError as exc:
                raise ValueError(f"NewBie Text Encode: {exc}") from None
        return io.NodeOutput(regions.attach(cond, **{regions.SPANS_KEY: spans, regions.REGIONS_KEY: boxes}))


NODES = [NewBieTextEncoderLoader, NewBieTextEncode]
