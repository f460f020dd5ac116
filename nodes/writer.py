"""NewBie Prompt Writer node: a description in, NewBie XML out, on the CLIP's own Gemma (glue only)."""

from __future__ import annotations

import torch

from ..newbie_core.errors import NewBieError
from ..newbie_core.text.gemma import GemmaTextEncoder
from ..newbie_core.text.tokenizers import SentencePieceTokenizer
from ..newbie_core.weights import FLOAT8_DTYPES
from ..newbie_core.writer import (
    DEFAULT_MAX_NEW_TOKENS,
    WriterSettings,
    write_prompt,
    writer_for_encoder,
    writer_from_state,
)
from ..newbie_core.writer.generate import MAX_NEW_TOKENS_LIMIT, partial_state
from ._api import io, schema
from .comfy_text import is_newbie_clip

NO_GEMMA = (
    "NewBie Prompt Writer needs a NewBie CLIP whose Gemma weights it can reach: use 'Load NewBie Text Encoders' "
    "(or DualCLIPLoader with type newbie and an unquantised Gemma file)"
)


def _core_gemma_state(clip) -> dict[str, torch.Tensor]:
    """Core's NewBie CLIP: the Gemma module's own parameters, by the HF names (no copy)."""
    inner = getattr(getattr(getattr(clip.cond_stage_model, "gemma", None), "transformer", None), "model", None)
    if inner is None or not hasattr(inner, "embed_tokens") or getattr(inner, "norm", None) is None:
        raise ValueError(NO_GEMMA)
    state = dict(inner.state_dict(keep_vars=True))
    odd = [k for k, v in state.items() if type(v) not in (torch.Tensor, torch.nn.Parameter) or v.dtype in FLOAT8_DTYPES]
    if odd:
        raise ValueError(f"{NO_GEMMA}; this one holds quantised weights (e.g. {odd[0]!r})")
    if len({v.device for v in state.values()}) > 1:
        raise ValueError(f"{NO_GEMMA}; ComfyUI loaded only part of this Gemma onto the device (low VRAM)")
    return state


def _core_tokenizer(clip):
    gemma_tok = clip.tokenizer.gemma
    cached = gemma_tok.__dict__.get("_newbie_writer_tokenizer")
    if cached is None:
        proto = getattr(getattr(gemma_tok, "tokenizer", None), "tokenizer", None)
        if proto is None or not hasattr(proto, "serialized_model_proto"):
            raise ValueError(f"{NO_GEMMA}; its tokenizer is not reachable")
        cached = SentencePieceTokenizer(proto.serialized_model_proto(), add_bos=True, add_eos=False, source="CLIP")
        gemma_tok.__dict__["_newbie_writer_tokenizer"] = cached
    return cached


def writer_from_clip(clip):
    """(writer LM, tokenizer) on ``clip``'s Gemma, loaded by ComfyUI's model management first."""
    if clip is None or not is_newbie_clip(clip):
        raise ValueError(NO_GEMMA)
    encoder = getattr(clip.cond_stage_model, "gemma", None)
    if isinstance(encoder, GemmaTextEncoder):  # our loader: add the top layer to the managed module, then load
        fresh = "_writer_lm" not in encoder.__dict__
        lm = writer_for_encoder(encoder)
        if fresh and getattr(clip.patcher, "size", 0):
            clip.patcher.size = 0  # the module grew by one layer: let ComfyUI measure it again
        clip.load_model()
        return lm, clip.tokenizer.gemma
    clip.load_model()  # core's loader: its Gemma holds every layer; re-read the parameters after each load
    return writer_from_state(_core_gemma_state(clip)), _core_tokenizer(clip)


class NewBiePromptWriter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="NewBiePromptWriter",
            display_name="NewBie Prompt Writer",
            category="NewBie/prompt",
            search_aliases=["newbie", "prompt writer", "xml", "enhance prompt", "llm", "gemma"],
            description="Turns a description into a NewBie XML prompt with the Gemma already loaded in the CLIP (no "
            "second model). Constrained decoding guarantees the result parses: known tags only, properly closed.",
            inputs=[
                io.Clip.Input("clip", tooltip="A NewBie CLIP: 'Load NewBie Text Encoders' or DualCLIPLoader (newbie)."),
                io.String.Input(
                    "text", multiline=True, tooltip="What the picture should show, in any words (any language)."
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=True,
                    tooltip="Sampling seed: the same seed and settings give the same prompt.",
                ),
                io.Int.Input(
                    "max_new_tokens",
                    default=DEFAULT_MAX_NEW_TOKENS,
                    min=64,
                    max=MAX_NEW_TOKENS_LIMIT,
                    tooltip="Token budget; the prompt is always closed within it.",
                ),
                io.Float.Input(
                    "temperature",
                    default=0.7,
                    min=0.0,
                    max=2.0,
                    step=0.05,
                    tooltip="0 = always the most likely tag; higher = more varied.",
                ),
                io.Float.Input("top_p", default=0.95, min=0.05, max=1.0, step=0.01, tooltip="Nucleus size."),
                io.String.Input(
                    "partial_prompt",
                    multiline=True,
                    default="",
                    optional=True,
                    tooltip="Optional: the start of a NewBie XML prompt to continue and finish.",
                ),
            ],
            outputs=[io.String.Output(display_name="xml", tooltip="NewBie XML; feed it to NewBie Text Encode.")],
        )

    @classmethod
    def validate_inputs(cls, partial_prompt: str | None = None) -> bool | str:
        """A partial prompt the writer cannot continue is refused when the graph is queued."""
        if not isinstance(partial_prompt, str):
            return True
        try:
            partial_state(partial_prompt)
        except NewBieError as exc:
            return f"NewBie Prompt Writer: {exc}"
        return True

    @classmethod
    def execute(
        cls,
        clip,
        text: str,
        seed: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        partial_prompt: str = "",
    ) -> io.NodeOutput:
        settings = WriterSettings(seed, max_new_tokens, temperature, top_p)
        try:
            settings.validate()
            partial_state(partial_prompt or "")  # bad input is reported before anything loads
            lm, tokenizer = writer_from_clip(clip)
            result = write_prompt(lm, tokenizer, text, settings, partial=partial_prompt or "")
        except NewBieError as exc:
            raise ValueError(f"NewBie Prompt Writer: {exc}") from None
        return io.NodeOutput(result.text)


NODES = [NewBiePromptWriter]
