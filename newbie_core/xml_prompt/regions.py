"""``<region>x0,y0,x1,y1</region>`` inside ``<character_N>``: layout data read out of the prompt.

The model was never shown region tags, so by default they are removed from the text the
encoders see (a region alone on its line takes its line with it); ``keep_tags`` leaves the
text untouched.
"""

from __future__ import annotations

from ..layout import REGION_TAG, Box, parse_box, strip_spans
from .parser import Element, decode, looks_like_xml, parse_tree
from .prompt import parse
from .schema import CHARACTER_TAG


def _region_elements(nodes, parent: str = ""):
    for node in nodes:
        if not isinstance(node, Element):
            continue
        m = CHARACTER_TAG.match(parent)
        if node.tag == REGION_TAG and m:
            yield int(m.group(1)), node
        else:
            yield from _region_elements(node.children, node.tag)


def extract_regions(text: str | bytes, keep_tags: bool = False) -> tuple[str, dict[int, Box]]:
    """(text for the encoders, {character index: Box}); raises XMLPromptError for invalid prompts or boxes."""
    decoded = decode(text)
    if f"<{REGION_TAG}" not in decoded or not looks_like_xml(decoded):
        return (text if isinstance(text, str) else decoded), {}
    parse(decoded)  # full validation with positions (boxes included)
    found = list(_region_elements(parse_tree(decoded)))
    if not found:
        return (text if isinstance(text, str) else decoded), {}
    regions = {index: parse_box(el.text()) for index, el in found}
    if keep_tags:
        return decoded, regions
    return strip_spans(decoded, [(el.start, el.end) for _, el in found]), regions
