"""How NewBie was conditioned in training: which text goes to which encoder.

* Gemma gets ``system prompt + prompt``, right-padded, cut at 512 tokens (BOS included).
* Jina gets the bare prompt (no system prompt), ``<s> ... </s>``.
* An empty prompt gets no system prompt at all (training's caption dropout and the
  official demo's empty negative).
"""

from __future__ import annotations

import re

from ..xml_prompt import looks_like_xml

GEMMA_MAX_TOKENS = 512
JINA_MAX_TOKENS = 2048

#: System prompts, exactly as training concatenated them (note the space after ``<Prompt Start>``).
SYSTEM_PROMPTS = {
    "xml": "You are an assistant designed to generate high-quality anime images based on xml format prompts. <Prompt Start> ",
    "tags": (
        "You are an assistant designed to generate high-quality anime images with the highest degree of "
        "image-text alignment based on textual prompts. <Prompt Start> "
    ),
    "negative": "You are an assistant designed to generate low-quality images based on textual prompts. <Prompt Start> ",
    "none": "",
}

#: Choices shown to users; "auto" picks xml or tags from the prompt itself.
PRESETS = ["auto", "xml", "tags", "negative", "none", "custom"]


def system_prompt_for(prompt: str, preset: str = "auto", custom: str = "") -> str:
    """The prefix Gemma sees for ``prompt`` under ``preset``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown system prompt preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    if not prompt.strip():
        return ""
    if preset == "auto":
        preset = "xml" if looks_like_xml(prompt) else "tags"
    if preset == "custom":
        if not custom.strip():
            return ""
        return custom if custom[-1].isspace() else custom + " "
    return SYSTEM_PROMPTS[preset]


def gemma_text(prompt: str, preset: str = "auto", custom: str = "") -> str:
    return system_prompt_for(prompt, preset, custom) + prompt


#: How ``\(`` / ``\)`` in a prompt reach the encoders. A1111-style prompts escape parentheses (``\(medium\)``)
#: so weight parsers leave them alone; training captions never contain those backslashes, and ComfyUI core
#: un-escapes them too. "unescape" (default) turns them into ``(`` / ``)``; "literal" passes the text as typed.
#: No ``(tag:1.2)`` weight parsing happens in either mode.
ESCAPE_MODES = ["unescape", "literal"]
_ESCAPED_PAREN = re.compile(r"\\([()])")


def apply_escapes(text: str, mode: str = "unescape") -> str:
    if mode not in ESCAPE_MODES:
        raise ValueError(f"unknown escape mode {mode!r}; choose one of: {', '.join(ESCAPE_MODES)}")
    return _ESCAPED_PAREN.sub(r"\1", text) if mode == "unescape" else text
