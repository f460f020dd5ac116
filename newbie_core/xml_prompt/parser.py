"""A small, safe XML reader for NewBie prompts, with line/column errors.

Written by hand rather than on top of a general XML library so that nothing can expand
entities, fetch DTDs or recurse without bound, and so every error can say where it is and
which tag is at fault. It reads a friendly superset of the subset prompts use: blocks with
no single root, a bare ``<`` or ``&`` that cannot start markup (``<3``, ``>_<``,
``black&white``) is plain text.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

MAX_PROMPT_CHARS = 65_536
MAX_DEPTH = 16

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_ENTITY = re.compile(r"&(#[0-9]{1,7}|#x[0-9A-Fa-f]{1,6}|[A-Za-z][A-Za-z0-9]{0,31});")
_PREDEFINED = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}
_MARKUP = re.compile(r"<\s*/?\s*[A-Za-z_][A-Za-z0-9_.\-]*\s*/?>")


class XMLPromptError(ValueError):
    """A prompt that cannot be read. ``line``/``column`` are 1-based; ``tag`` names the element at fault."""

    def __init__(self, message: str, line: int, column: int, tag: str | None = None):
        self.message = message
        self.line = line
        self.column = column
        self.tag = tag
        super().__init__(f"line {line}, column {column}: {message}")


@dataclass
class Text:
    value: str
    start: int


@dataclass
class Element:
    tag: str
    start: int
    children: list = field(default_factory=list)
    end: int = -1  # index just past the closing tag

    def text(self) -> str:
        return "".join(c.value for c in self.children if isinstance(c, Text))

    def elements(self) -> list[Element]:
        return [c for c in self.children if isinstance(c, Element)]


class Positions:
    """Index -> (line, column), 1-based, for error messages."""

    def __init__(self, text: str):
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def __call__(self, index: int) -> tuple[int, int]:
        line = bisect.bisect_right(self.starts, index)
        return line, index - self.starts[line - 1] + 1


def looks_like_xml(text: str) -> bool:
    """True when the prompt is meant as XML: it uses a NewBie tag (``<character_1>``, ``<caption>``, ``<n>``...)
    or closes some tag (``</x>``). Otherwise angle brackets are prose (``say <hello>``, ``<br>``) and the
    prompt is plain text, passed through untouched (``stray_markup`` finds them for a warning)."""
    from .schema import is_newbie_tag

    for m in _MARKUP.finditer(text):
        body = m.group(0)[1:].lstrip()
        if body.startswith("/") or is_newbie_tag(_NAME.match(body).group(0)):
            return True
    return False


def stray_markup(text: str) -> re.Match | None:
    """The first tag-like ``<word>`` of a prompt that ``looks_like_xml`` reads as plain text."""
    return _MARKUP.search(text)


def decode(data: str | bytes) -> str:
    """Bytes -> text (UTF-8, BOM stripped); invalid bytes and NULs become positioned errors."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            prefix = data[: exc.start].decode("utf-8", errors="replace")
            line, col = Positions(prefix)(len(prefix))
            raise XMLPromptError(
                f"invalid UTF-8 byte 0x{data[exc.start]:02x} (byte offset {exc.start})", line, col
            ) from None
    elif isinstance(data, str):
        text = data
    else:
        raise TypeError(f"prompt must be str or bytes, not {type(data).__name__}")
    if text.startswith("\ufeff"):
        text = text[1:]
    if len(text) > MAX_PROMPT_CHARS:
        raise XMLPromptError(f"prompt is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS}", 1, 1)
    nul = text.find("\x00")
    if nul >= 0:
        line, col = Positions(text)(nul)
        raise XMLPromptError("NUL character in prompt", line, col)
    return text


def parse_tree(text: str) -> list:
    """Top-level nodes (Elements and Texts) of ``text``. Raises XMLPromptError with a position."""
    pos = Positions(text)

    def fail(message, index, tag=None):
        line, col = pos(index)
        raise XMLPromptError(message, line, col, tag)

    root = Element("", 0)
    stack = [root]
    i, n = 0, len(text)
    buf: list[str] = []
    buf_start = 0

    def flush():
        nonlocal buf
        if buf:
            stack[-1].children.append(Text("".join(buf), buf_start))
            buf = []

    def add_text(s, at):
        nonlocal buf_start
        if not buf:
            buf_start = at
        buf.append(s)

    while i < n:
        ch = text[i]
        if ch == "&":
            m = _ENTITY.match(text, i)
            if m is None:
                add_text("&", i)
                i += 1
                continue
            ref = m.group(1)
            if ref.startswith("#"):
                code = int(ref[2:], 16) if ref[1:2] in ("x",) else int(ref[1:])
                if code == 0 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                    fail(f"character reference &{ref}; is not a valid character", i)
                add_text(chr(code), i)
            elif ref in _PREDEFINED:
                add_text(_PREDEFINED[ref], i)
            else:
                fail(
                    f"unknown entity &{ref}; (only &amp; &lt; &gt; &quot; &apos; and numeric references are allowed)", i
                )
            i = m.end()
            continue
        if ch != "<":
            j = i + 1
            while j < n and text[j] not in "<&":
                j += 1
            add_text(text[i:j], i)
            i = j
            continue
        # markup
        if text.startswith("<!--", i):
            end = text.find("-->", i + 4)
            if end < 0:
                fail("comment <!-- is never closed", i)
            flush()
            i = end + 3
            continue
        if text.startswith("<![CDATA[", i):
            end = text.find("]]>", i + 9)
            if end < 0:
                fail("CDATA section is never closed", i)
            add_text(text[i + 9 : end], i)
            i = end + 3
            continue
        if text.startswith("<!", i):
            word = re.match(r"<!([A-Za-z]*)", text[i:]).group(1) or "..."
            fail(f"<!{word}> declarations are not allowed in prompts (no DTDs or entity definitions)", i)
        if text.startswith("<?", i):
            end = text.find("?>", i + 2)
            if end < 0:
                fail("processing instruction <? is never closed", i)
            if text[i + 2 : i + 5].lower() != "xml" or text[:i].strip():
                fail("processing instructions (<?...?>) are not allowed in prompts", i)
            i = end + 2
            continue
        if text.startswith("</", i):
            m = _NAME.match(text, i + 2)
            close = None if m is None else re.compile(r"\s*>").match(text, m.end())
            if m is None or close is None:
                fail("malformed closing tag", i)
            name = m.group(0)
            flush()
            if len(stack) == 1:
                fail(f"</{name}> has no matching opening tag", i, name)
            top = stack[-1]
            if top.tag != name:
                ol, oc = pos(top.start)
                fail(f"</{name}> closes <{top.tag}>, which was opened at line {ol}, column {oc}", i, name)
            stack.pop().end = close.end()
            i = close.end()
            continue
        m = _NAME.match(text, i + 1)
        if m is None:  # "<3", ">_<", "a < b": plain text
            add_text("<", i)
            i += 1
            continue
        name = m.group(0)
        j = m.end()
        while j < n and text[j] in " \t\r\n":
            j += 1
        if text.startswith("/>", j):
            self_closing, end = True, j + 2
        elif j < n and text[j] == ">":
            self_closing, end = False, j + 1
        elif j >= n:
            fail(f"tag <{name} is not finished (missing '>')", i, name)
        else:
            fail(f"<{name}> has attributes or stray characters; NewBie prompts use plain <tag>value</tag>", i, name)
        flush()
        element = Element(name, i, end=end)
        stack[-1].children.append(element)
        if not self_closing:
            if len(stack) > MAX_DEPTH:
                fail(f"<{name}> is nested more than {MAX_DEPTH} levels deep", i, name)
            stack.append(element)
        i = end
    flush()
    if len(stack) > 1:
        top = stack[-1]
        fail(f"<{top.tag}> is never closed", top.start, top.tag)
    return root.children
