"""The writer's XML automaton: it accepts exactly the prompt prefixes it promises, and can always finish."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from newbie_core.writer import grammar
from newbie_core.xml_prompt import build, parse

MODEL_CARD = build(
    characters=[
        {"n": "$character_1$", "gender": "1girl", "appearance": "long_hair, blue_eyes", "position": "center_left"},
        {"n": "", "gender": "1boy", "clothing": "school_uniform", "expression": "smile"},
    ],
    general_tags={"count": "1girl, 1boy", "style": "anime_style", "background": "classroom"},
    indent="  ",
)


def test_model_card_layout_is_accepted_to_the_end():
    assert grammar.advance(grammar.START, MODEL_CARD) == grammar.DONE
    for i in range(len(MODEL_CARD)):
        assert grammar.advance(grammar.START, MODEL_CARD[:i]) is not None, MODEL_CARD[:i]


@pytest.mark.parametrize(
    "text",
    [
        "<character_2>",  # numbering starts at 1
        "<character_1><foo>",  # unknown field
        "<character_1><n>a</n><n>",  # a field twice
        "<character_1><gender>x</gender></character_1>",  # <n> is required
        "<character_1><n>a</gender>",  # wrong closing tag
        "<character_1><n>a<b</n>",  # raw '<' in a value
        "<character_1><n>a&foo;",  # unknown entity
        "<character_1><n>a\nb",  # values are one line
        "<general_tags><count></count>",  # tag fields cannot be empty
        "<general_tags></general_tags>",  # the general block needs a field
        "<general_tags><count>a</count></general_tags>x",  # nothing after the end
        "<general_tags><n>",  # character field in the general block
        "hello",  # stray text
        "<character_1>     <n>",  # at most 4 whitespace characters between elements
    ],
)
def test_invalid_prefixes_are_refused(text):
    assert grammar.advance(grammar.START, text) is None


def test_escapes_and_value_length_bound():
    ok = "<character_1><n>tom &amp; jerry, a &lt;3 b, rem_\\(re:zero\\)</n>"
    assert grammar.advance(grammar.START, ok) is not None
    head = "<character_1><n>"
    assert grammar.advance(grammar.START, head + "x" * grammar.MAX_VALUE_CHARS) is not None
    assert grammar.advance(grammar.START, head + "x" * (grammar.MAX_VALUE_CHARS + 1)) is None
    # an escape that could not finish inside the bound is refused where it starts
    assert grammar.advance(grammar.START, head + "x" * (grammar.MAX_VALUE_CHARS - 3) + "&") is None


def _random_prefix(seed: int, length: int) -> str:
    """A random walk over the characters the automaton accepts."""
    rng = random.Random(seed)
    alphabet = "<>/&; \nabcdefghijklmnopqrstuvwxyz_0123456789,\\()"
    state, text = grammar.START, ""
    for _ in range(length):
        chars = grammar.next_chars(state)
        choices = list(chars) if chars is not None else list(alphabet)
        rng.shuffle(choices)
        for ch in choices:
            nxt = grammar.step(state, ch)
            if nxt is not None:
                state, text = nxt, text + ch
                break
        else:
            break
    return text


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 10**6), st.integers(0, 400))
def test_every_accepted_prefix_finishes_by_its_shortest_completion(seed, length):
    prefix = _random_prefix(seed, length)
    state = grammar.advance(grammar.START, prefix)
    assert state is not None
    rest = grammar.completion(state)
    # typing the completion shortens it by exactly one character each time (the budget argument)
    s = state
    for i, ch in enumerate(rest):
        s = grammar.step(s, ch)
        assert s is not None
        assert len(grammar.completion(s)) == len(rest) - i - 1
    assert s == grammar.DONE
    prompt = parse(prefix + rest)
    assert prompt.is_xml and prompt.warnings == []
    assert prompt.general_tags


def test_shortest_completion_from_the_start():
    assert grammar.completion(grammar.START) == "<general_tags><count>a</count></general_tags>"
    state = grammar.advance(grammar.START, "<character_1><gender>1girl")
    assert grammar.completion(state) == "</gender><n></n></character_1><general_tags><count>a</count></general_tags>"
