"""NewBie XML prompts: safe parsing with positioned errors, a tag schema, a builder and normalisation.

Pure Python; the model itself reads the XML as plain text, so this module only validates
and builds text, it never changes what a valid prompt says.
"""

from .parser import MAX_DEPTH, MAX_PROMPT_CHARS, XMLPromptError, looks_like_xml
from .prompt import (
    Character,
    StructuredPrompt,
    XMLPromptWarning,
    build,
    normalize_tag,
    normalize_tags,
    parse,
    pretty,
)
from .regions import extract_regions
from .schema import CHARACTER_FIELDS, GENERAL_FIELDS

__all__ = [
    "CHARACTER_FIELDS",
    "GENERAL_FIELDS",
    "MAX_DEPTH",
    "MAX_PROMPT_CHARS",
    "Character",
    "StructuredPrompt",
    "XMLPromptError",
    "XMLPromptWarning",
    "build",
    "extract_regions",
    "looks_like_xml",
    "normalize_tag",
    "normalize_tags",
    "parse",
    "pretty",
]
