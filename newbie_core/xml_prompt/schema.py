"""The tags NewBie XML prompts use (model card, official template and builders).

Unknown tags are kept and reported as warnings: the model reads the XML as plain text, so
an unfamiliar tag is legal, just not something the model was shown in training.
"""

from __future__ import annotations

import re

CHARACTER_FIELDS = (
    "n",
    "gender",
    "appearance",
    "clothing",
    "body_type",
    "expression",
    "action",
    "interaction",
    "position",
)

GENERAL_FIELDS = (
    "count",
    "artists",
    "style",
    "background",
    "environment",
    "perspective",
    "atmosphere",
    "lighting",
    "quality",
    "resolution",
    "objects",
    "other",
)

#: Layout data inside ``<character_N>``: validated, not prompt text (see ``newbie_core.layout``).
LAYOUT_FIELDS = ("region",)

#: Top-level sections besides ``character_N``; ``image`` is the optional root the official assembler writes.
SECTIONS = ("caption", "general_tags")
ROOTS = ("image",)

#: Fields whose value is natural language, not Danbooru tags (no underscore normalisation).
NATURAL_LANGUAGE_FIELDS = ("caption",)

CHARACTER_TAG = re.compile(r"character_(\d+)\Z")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")


def is_newbie_tag(name: str) -> bool:
    """A tag NewBie prompts use (a section, a root, a character block or a field of one)."""
    return (
        name in CHARACTER_FIELDS
        or name in GENERAL_FIELDS
        or name in SECTIONS
        or name in ROOTS
        or name == "style"
        or CHARACTER_TAG.match(name) is not None
    )
