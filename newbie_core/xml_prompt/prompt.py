"""Structured NewBie prompts: parse (with validation), build, normalise and pretty-print."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..layout import RegionError, parse_box
from .parser import Element, Positions, Text, XMLPromptError, decode, looks_like_xml, parse_tree, stray_markup
from .schema import (
    CHARACTER_FIELDS,
    CHARACTER_TAG,
    GENERAL_FIELDS,
    LAYOUT_FIELDS,
    NATURAL_LANGUAGE_FIELDS,
    ROOTS,
    SECTIONS,
)


@dataclass(frozen=True)
class XMLPromptWarning:
    message: str
    line: int
    column: int
    tag: str | None = None

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}: {self.message}"


@dataclass
class Character:
    index: int
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class StructuredPrompt:
    """What a prompt says. ``plain`` holds a non-XML prompt verbatim (tags or prose)."""

    characters: list[Character] = field(default_factory=list)
    general_tags: dict[str, str] = field(default_factory=dict)
    caption: str | None = None
    sections: dict[str, str] = field(default_factory=dict)
    root: str | None = None
    plain: str | None = None
    warnings: list[XMLPromptWarning] = field(default_factory=list, compare=False)

    @property
    def is_xml(self) -> bool:
        return self.plain is None


def parse(text: str | bytes) -> StructuredPrompt:
    """Read a prompt. XML is validated against the NewBie tag set; anything else passes through as ``plain``.

    Raises :class:`XMLPromptError` (with ``line``, ``column``, ``tag``) for malformed XML; unknown
    tags and similar oddities become ``warnings``. Nothing in the prompt is dropped.
    """
    text = decode(text)
    if not looks_like_xml(text):
        prompt = StructuredPrompt(plain=text)
        stray = stray_markup(text)
        if stray is not None:
            line, col = Positions(text)(stray.start())
            prompt.warnings.append(
                XMLPromptWarning(
                    f"{stray.group(0)} is not a NewBie tag and no tag is closed, so the prompt is read as plain text",
                    line,
                    col,
                )
            )
        return prompt
    pos = Positions(text)
    nodes = parse_tree(text)
    return _Reader(pos).read(nodes)


class _Reader:
    def __init__(self, pos: Positions):
        self.pos = pos
        self.prompt = StructuredPrompt()
        self.seen: dict[str, int] = {}

    def fail(self, message, index, tag=None):
        line, col = self.pos(index)
        raise XMLPromptError(message, line, col, tag)

    def warn(self, message, index, tag=None):
        line, col = self.pos(index)
        self.prompt.warnings.append(XMLPromptWarning(message, line, col, tag))

    def _once(self, key: str, el: Element, what: str):
        if key in self.seen:
            line, col = self.pos(self.seen[key])
            self.fail(f"<{el.tag}> appears twice{what} (first at line {line}, column {col})", el.start, el.tag)
        self.seen[key] = el.start

    def _no_stray_text(self, nodes, where: str):
        for node in nodes:
            if isinstance(node, Text) and node.value.strip():
                snippet = node.value.strip()
                snippet = snippet if len(snippet) <= 30 else snippet[:27] + "..."
                offset = node.start + (len(node.value) - len(node.value.lstrip()))
                self.fail(f"stray text {snippet!r} {where}", offset)

    def read(self, nodes) -> StructuredPrompt:
        elements = [n for n in nodes if isinstance(n, Element)]
        roots = [e for e in elements if e.tag in ROOTS]
        if len(roots) == 1 and all(e is roots[0] or e.tag == "style" for e in elements):
            root = roots[0]
            self.prompt.root = root.tag
            for e in elements:
                if e is not root:
                    self.section(e)
            nodes = root.children
            self._no_stray_text(nodes, f"inside <{root.tag}>; put it inside a tag such as <caption>")
        else:
            self._no_stray_text(nodes, "outside any tag; put it inside a tag such as <caption>")
        for el in (n for n in nodes if isinstance(n, Element)):
            self.section(el)
        return self.prompt

    def section(self, el: Element):
        m = CHARACTER_TAG.match(el.tag)
        if m:
            index = int(m.group(1))
            if index < 1 or m.group(1).startswith("0"):
                self.fail(f"character blocks are numbered from 1: <{el.tag}>", el.start, el.tag)
            self._once(el.tag, el, "")
            fields = self.fields(el, CHARACTER_FIELDS)
            self.prompt.characters.append(Character(index, fields))
            return
        if el.tag == "general_tags":
            self._once(el.tag, el, "")
            self.prompt.general_tags = self.fields(el, GENERAL_FIELDS)
            return
        self._once(el.tag, el, " at the top level")
        if el.elements():
            inner = el.elements()[0]
            self.fail(f"<{inner.tag}> cannot be nested inside <{el.tag}>", inner.start, inner.tag)
        if el.tag == "caption":
            self.prompt.caption = el.text().strip()
            return
        if el.tag not in SECTIONS and el.tag != "style":
            self.warn(f"unknown section <{el.tag}> (kept as text; the model was not trained on it)", el.start, el.tag)
        self.prompt.sections[el.tag] = el.text().strip()

    def fields(self, block: Element, known) -> dict[str, str]:
        self._no_stray_text(block.children, f"inside <{block.tag}>; put it inside a tag such as <{known[1]}>")
        out: dict[str, str] = {}
        first: dict[str, int] = {}
        for el in block.elements():
            if el.tag in first:
                line, col = self.pos(first[el.tag])
                self.fail(
                    f"<{el.tag}> appears twice in <{block.tag}> (first at line {line}, column {col})", el.start, el.tag
                )
            first[el.tag] = el.start
            if el.elements():
                inner = el.elements()[0]
                self.fail(f"<{inner.tag}> cannot be nested inside <{el.tag}>", inner.start, inner.tag)
            if el.tag in LAYOUT_FIELDS and CHARACTER_TAG.match(block.tag):
                self._check_region(el, block)
            elif el.tag not in known:
                self.warn(
                    f"unknown tag <{el.tag}> in <{block.tag}> (kept; the model was not trained on it)", el.start, el.tag
                )
            out[el.tag] = el.text().strip()
        return out

    def _check_region(self, el: Element, block: Element):
        value = el.text()
        at = el.start
        for node in el.children:
            if isinstance(node, Text) and node.value.strip():
                at = node.start + (len(node.value) - len(node.value.lstrip()))
                break
        try:
            parse_box(value)
        except RegionError as exc:
            self.fail(f"<{el.tag}> of <{block.tag}> {exc}", at, el.tag)


# ---------------------------------------------------------------------------- building


def _escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_UNESCAPED_PAREN = re.compile(r"(?<!\\)([()])")


def normalize_tag(tag: str) -> str:
    """One Danbooru tag as the model saw them: trimmed, inner spaces to underscores, parentheses escaped."""
    tag = re.sub(r"\s+", "_", tag.strip())
    return _UNESCAPED_PAREN.sub(r"\\\1", tag)


def normalize_tags(value: str) -> str:
    """A comma-separated tag list normalised tag by tag; empty entries are removed."""
    tags = [normalize_tag(t) for t in value.split(",")]
    return ", ".join(t for t in tags if t)


def _field_value(name: str, value: str, normalize: bool) -> str:
    value = value.strip()
    if normalize and name not in NATURAL_LANGUAGE_FIELDS:
        value = normalize_tags(value)
    return value


def build(
    prompt: StructuredPrompt | None = None,
    *,
    characters: list[dict[str, str]] | None = None,
    general_tags: dict[str, str] | None = None,
    caption: str | None = None,
    normalize: bool = False,
    indent: str = "",
) -> str:
    """XML text in the layout of the model card: blocks without a root, separated by blank lines.

    Either pass a parsed ``prompt`` or ``characters`` (dicts of field -> value, numbered 1..N in
    order) plus ``general_tags`` and ``caption``. Empty fields are left out, except ``<n>``,
    which the official converter always keeps. With ``normalize`` tag fields are rewritten in
    Danbooru form (underscores, escaped parentheses).
    """
    if prompt is None:
        prompt = StructuredPrompt(
            characters=[Character(i + 1, dict(c)) for i, c in enumerate(characters or [])],
            general_tags=dict(general_tags or {}),
            caption=caption,
        )
    elif prompt.plain is not None:
        return prompt.plain
    for name in prompt.sections:
        _check_tag_name(name)
    for char in prompt.characters:
        if char.index < 1:
            raise ValueError(f"character numbers start at 1, got {char.index}")

    blocks: list[str] = []
    for name, value in prompt.sections.items():
        if name == "style":
            blocks.append(f"<style>{_escape(value.strip())}</style>")
    if prompt.caption is not None and prompt.caption.strip():
        blocks.append(f"<caption>{_escape(prompt.caption.strip())}</caption>")
    for char in sorted(prompt.characters, key=lambda c: c.index):
        tag = f"character_{char.index}"
        lines = [f"<{tag}>"]
        fields = dict(char.fields)
        fields.setdefault("n", "")
        for name in list(CHARACTER_FIELDS) + [k for k in fields if k not in CHARACTER_FIELDS]:
            if name not in fields:
                continue
            value = _field_value(name, fields[name], normalize)
            if value or name == "n":
                _check_tag_name(name)
                lines.append(f"{indent}<{name}>{_escape(value)}</{name}>")
        lines.append(f"</{tag}>")
        blocks.append("\n".join(lines))
    general = {k: _field_value(k, v, normalize) for k, v in prompt.general_tags.items()}
    general = {k: v for k, v in general.items() if v}
    if general:
        lines = ["<general_tags>"]
        for name in list(GENERAL_FIELDS) + [k for k in general if k not in GENERAL_FIELDS]:
            if name in general:
                _check_tag_name(name)
                lines.append(f"{indent}<{name}>{_escape(general[name])}</{name}>")
        lines.append("</general_tags>")
        blocks.append("\n".join(lines))
    for name, value in prompt.sections.items():
        if name != "style" and value.strip():
            blocks.append(f"<{name}>{_escape(value.strip())}</{name}>")
    return "\n\n".join(blocks)


def _check_tag_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", name):
        raise ValueError(f"{name!r} is not a valid tag name")


def pretty(text: str | bytes, indent: str = "  ") -> str:
    """Parse and re-emit with consistent layout (validates on the way)."""
    return build(parse(text), indent=indent)
