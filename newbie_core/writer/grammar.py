"""A character-level automaton for the NewBie XML the writer may emit.

Every prefix it accepts can still be finished into a prompt that ``newbie_core.xml_prompt.parse``
reads without errors or warnings: only schema tags (from ``xml_prompt.schema``), each field at
most once, blocks properly nested and closed, ``&``-escapes complete, values on one line and
bounded. The layout is the model card's: ``<character_1>`` ... ``<character_N>`` (numbered from
1 in order), then ``<general_tags>``, and the document ends when ``</general_tags>`` closes.

States are small tuples, so they are cheap to create and can key caches:

* ``("gap", ctx, ws)``: between elements of ``ctx``; ``ws`` whitespace characters typed so far;
* ``("tag", ctx, typed, field)``: after ``<``; ``typed`` is the tag text so far; ``field`` is set
  when this is the closing tag of that field's value;
* ``("val", ctx, field, length, has_text, entity)``: inside a field value; ``entity`` is the text
  of an unfinished ``&...;`` escape or None;
* ``("done",)``: the document is complete.

``ctx`` is ``("top", next_character)``, ``("char", k, used_fields)`` or ``("gen", used_fields)``.
"""

from __future__ import annotations

from functools import lru_cache

from ..xml_prompt.schema import CHARACTER_FIELDS, GENERAL_FIELDS

MAX_CHARACTERS = 9
MAX_VALUE_CHARS = 300
MAX_GAP_CHARS = 4
GAP_CHARS = (" ", "\n")
ENTITIES = ("amp;", "lt;", "gt;", "quot;", "apos;")
_LONGEST_ENTITY = 1 + max(len(e) for e in ENTITIES)

START = ("gap", ("top", 1), 0)
DONE = ("done",)


def _needs_text(field: str) -> bool:
    """``<n>`` may stay empty (the official converter keeps ``<n></n>``); other fields need a tag."""
    return field != "n"


@lru_cache(maxsize=4096)
def tag_options(ctx, field) -> tuple[str, ...]:
    """The tag texts (after ``<``, through ``>``) allowed in ``ctx``."""
    if field is not None:
        return (f"/{field}>",)
    kind = ctx[0]
    if kind == "top":
        k = ctx[1]
        return ((f"character_{k}>",) if k <= MAX_CHARACTERS else ()) + ("general_tags>",)
    used = ctx[-1]
    names = CHARACTER_FIELDS if kind == "char" else GENERAL_FIELDS
    opts = tuple(f"{f}>" for f in names if f not in used)
    if kind == "char" and "n" in used:
        opts += (f"/character_{ctx[1]}>",)
    if kind == "gen" and used:
        opts += ("/general_tags>",)
    return opts


def _after_tag(ctx, field, tag: str):
    """The state reached when ``<tag`` is complete."""
    if field is not None:
        return ("gap", ctx[:-1] + (ctx[-1] | {field},), 0)
    kind = ctx[0]
    if kind == "top":
        if tag == "general_tags>":
            return ("gap", ("gen", frozenset()), 0)
        return ("gap", ("char", ctx[1], frozenset()), 0)
    if tag.startswith("/"):
        return ("gap", ("top", ctx[1] + 1), 0) if kind == "char" else DONE
    return ("val", ctx, tag[:-1], 0, False, None)


def _value_char_ok(ch: str) -> bool:
    return ch not in "<&\x7f" and ch >= " " and ch not in "\u2028\u2029\x85"


def step(state, ch: str):
    """The state after typing ``ch``, or None when no valid prompt continues this way."""
    kind = state[0]
    if kind == "val":
        _, ctx, field, length, has_text, entity = state
        if entity is not None:
            typed = entity + ch
            if not any(e.startswith(typed) for e in ENTITIES):
                return None
            if typed in ENTITIES:
                return ("val", ctx, field, length + 1, True, None)
            return ("val", ctx, field, length + 1, has_text, typed)
        if ch == "<":
            if _needs_text(field) and not has_text:
                return None
            return ("tag", ctx, "", field)
        if ch == "&":
            if length + _LONGEST_ENTITY > MAX_VALUE_CHARS:
                return None
            return ("val", ctx, field, length + 1, has_text, "")
        if not _value_char_ok(ch) or length + 1 > MAX_VALUE_CHARS:
            return None
        blank = ch.isspace()
        if blank and _needs_text(field) and not has_text and length + 1 >= MAX_VALUE_CHARS:
            return None  # no room left for the tag the field still needs
        return ("val", ctx, field, length + 1, has_text or not blank, None)
    if kind == "gap":
        _, ctx, ws = state
        if ch == "<":
            return ("tag", ctx, "", None)
        if ch in GAP_CHARS and ws < MAX_GAP_CHARS:
            return ("gap", ctx, ws + 1)
        return None
    if kind == "tag":
        _, ctx, typed, field = state
        typed += ch
        options = tag_options(ctx, field)
        if typed in options:
            return _after_tag(ctx, field, typed)
        if any(o.startswith(typed) for o in options):
            return ("tag", ctx, typed, field)
        return None
    return None


def advance(state, text: str):
    """``step`` over a whole string (None as soon as one character is refused)."""
    for ch in text:
        state = step(state, ch)
        if state is None:
            return None
    return state


def next_chars(state) -> tuple[str, ...] | None:
    """Every character ``step`` can accept here, or None when that set is open-ended (free value text)."""
    kind = state[0]
    if kind == "gap":
        return ("<",) + (GAP_CHARS if state[2] < MAX_GAP_CHARS else ())
    if kind == "tag":
        _, ctx, typed, field = state
        n = len(typed)
        return tuple(dict.fromkeys(o[n] for o in tag_options(ctx, field) if o.startswith(typed)))
    if kind == "val" and state[5] is not None:
        n = len(state[5])
        return tuple(dict.fromkeys(e[n] for e in ENTITIES if e.startswith(state[5])))
    if kind == "done":
        return ()
    return None


def _shortest_general_field() -> str:
    return min(GENERAL_FIELDS, key=len)


@lru_cache(maxsize=65536)
def completion(state, filler: str = "a") -> str:
    """The shortest text that takes ``state`` to DONE (``filler`` stands for one tag character).

    Typing it one character at a time shortens it by exactly one each time, which is what lets the
    decoder promise a complete document within its token budget.
    """
    kind = state[0]
    if kind == "done":
        return ""
    if kind == "gap":
        ctx = state[1]
        if ctx[0] == "top":
            opts = tag_options(ctx, None)
            return min(("<" + o + completion(_after_tag(ctx, None, o), filler) for o in opts), key=len)
        if ctx[0] == "char":
            head = "" if "n" in ctx[2] else "<n></n>"
            return head + f"</character_{ctx[1]}>" + completion(("gap", ("top", ctx[1] + 1), 0), filler)
        if ctx[1]:
            return "</general_tags>"
        g = _shortest_general_field()
        return f"<{g}>{filler}</{g}></general_tags>"
    if kind == "tag":
        _, ctx, typed, field = state
        best = None
        for o in tag_options(ctx, field):
            if o.startswith(typed):
                tail = o[len(typed) :] + completion(_after_tag(ctx, field, o), filler)
                best = tail if best is None or len(tail) < len(best) else best
        return best
    _, ctx, field, length, has_text, entity = state
    text = ""
    if entity is not None:
        text = min((e[len(entity) :] for e in ENTITIES if e.startswith(entity)), key=len)
        has_text = True
    if _needs_text(field) and not has_text:
        text += filler
    return text + f"</{field}>" + completion(("gap", ctx[:-1] + (ctx[-1] | {field},), 0), filler)


def describe_expected(state) -> str:
    """Human words for what may come next (for errors about a user's partial prompt)."""
    kind = state[0]
    if kind == "gap":
        return "one of " + ", ".join("<" + o for o in tag_options(state[1], None))
    if kind == "tag":
        return "one of " + ", ".join("<" + o for o in tag_options(state[1], state[3]) if o.startswith(state[2]))
    if kind == "val":
        return f"tag text or </{state[2]}> (no '<', a complete &...; escape, one line, at most {MAX_VALUE_CHARS} characters)"
    return "the end of the prompt"
