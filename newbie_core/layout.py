"""Character regions as users write them: boxes ``x0,y0,x1,y1`` in 0-1000 units of the image.

Pure Python (no torch), shared by the XML reader (``<region>`` inside ``<character_N>``), the CLI
(``--region character_1=...``) and the ComfyUI node, so every entry point accepts the same boxes
with the same messages. ``web/xml_validate.js`` repeats these rules and messages for the editor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Coordinates are in thousandths of the image width/height (the official template's ``bbox`` spirit).
SCALE = 1000

REGION_TAG = "region"
_NUMBER = re.compile(r"\s*(-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))\s*\Z")
_CHARACTER = re.compile(r"character_([1-9][0-9]*)\Z")


class RegionError(ValueError):
    """A region that cannot be used; the message does not name where it came from (callers add that)."""


@dataclass(frozen=True)
class Box:
    """Half-open box ``[x0, x1) x [y0, y1)`` in 0-1000 units (x to the right, y down)."""

    x0: float
    y0: float
    x1: float
    y1: float

    def as_list(self) -> list[float]:
        return [_plain(v) for v in (self.x0, self.y0, self.x1, self.y1)]

    def __str__(self) -> str:
        return ",".join(str(v) for v in self.as_list())

    @property
    def is_full_frame(self) -> bool:
        return self.x0 <= 0 and self.y0 <= 0 and self.x1 >= SCALE and self.y1 >= SCALE


def _plain(v: float) -> float | int:
    return int(v) if float(v).is_integer() else float(v)


def parse_box(text) -> Box:
    """``"x0,y0,x1,y1"`` (or four numbers) -> Box; RegionError says what is wrong."""
    if isinstance(text, (list, tuple)):
        parts = [str(v) for v in text]
        shown = ",".join(parts)
    else:
        shown = str(text).strip()
        parts = shown.split(",")
    numbers = [_NUMBER.match(p) for p in parts]
    if len(parts) != 4 or not all(numbers):
        raise RegionError(f'needs four numbers x0,y0,x1,y1 from 0 to {SCALE}, got "{shown}"')
    x0, y0, x1, y1 = (float(m.group(1)) for m in numbers)
    for name, v in (("x0", x0), ("y0", y0), ("x1", x1), ("y1", y1)):
        if not 0 <= v <= SCALE:
            raise RegionError(f"{name}={_plain(v)} is outside 0-{SCALE}")
    for a, b, va, vb in (("x0", "x1", x0, x1), ("y0", "y1", y0, y1)):
        if vb <= va:
            raise RegionError(f"is empty or inverted: {b} ({_plain(vb)}) must be greater than {a} ({_plain(va)})")
    return Box(x0, y0, x1, y1)


def parse_character_name(name: str) -> int:
    """``"character_2"`` -> 2."""
    m = _CHARACTER.match(name.strip())
    if m is None:
        raise RegionError(f'"{name}" is not a character name; use character_1, character_2, ...')
    return int(m.group(1))


def parse_region_arg(text: str) -> tuple[int, Box]:
    """One ``character_N=x0,y0,x1,y1`` (the CLI's and the node's syntax)."""
    name, sep, box = text.partition("=")
    if not sep:
        raise RegionError("needs the form character_N=x0,y0,x1,y1")
    return parse_character_name(name), parse_box(box)


def parse_region_lines(text: str) -> dict[int, Box]:
    """Several ``character_N=...`` separated by newlines or ``;`` (the ComfyUI widget); errors name the entry."""
    out: dict[int, Box] = {}
    for entry in re.split(r"[;\n]", text or ""):
        if not entry.strip():
            continue
        try:
            index, box = parse_region_arg(entry)
        except RegionError as exc:
            raise RegionError(f"{entry.strip()}: {exc}") from None
        if index in out:
            raise RegionError(f"{entry.strip()}: character_{index} is given twice")
        out[index] = box
    return out


def parse_layers(text: str) -> tuple[int, ...] | None:
    """Main-layer selection such as ``"0-11,20"`` (0-based, inclusive ranges); empty or ``"all"`` = None (every layer)."""
    text = (text or "").strip()
    if text.lower() in ("", "all"):
        return None
    out: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?", part)
        if m is None or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise RegionError(f'layers "{text}" must be layer numbers or ranges such as 0-11,20 (or all)')
        out.update(range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1))
    return tuple(sorted(out))


def strip_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """Remove ``[start, end)`` ranges from ``text``; a range alone on its line takes its line with it."""
    out, last = [], 0
    for start, end in sorted(spans):
        line_start = start
        while line_start > 0 and text[line_start - 1] in " \t":
            line_start -= 1
        line_end = end
        while line_end < len(text) and text[line_end] in " \t":
            line_end += 1
        alone = (line_start == 0 or text[line_start - 1] == "\n") and (
            line_end == len(text) or text[line_end] in "\r\n"
        )
        if alone:
            start, end = line_start, line_end
            if text.startswith("\r\n", end):
                end += 2
            elif text.startswith("\n", end):
                end += 1
        out.append(text[last:start])
        last = end
    out.append(text[last:])
    return "".join(out)
