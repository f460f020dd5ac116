"""XML prompt parsing, validation, building and adversarial inputs."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from newbie_core.xml_prompt import (
    CHARACTER_FIELDS,
    GENERAL_FIELDS,
    MAX_PROMPT_CHARS,
    Character,
    StructuredPrompt,
    XMLPromptError,
    build,
    normalize_tags,
    parse,
    pretty,
)

MODEL_CARD_EXAMPLE = """<character_1>
<n>$character_1$</n>
<gender>1girl</gender>
<appearance>chibi, red_eyes, blue_hair, long_hair</appearance>
<clothing>school_uniform, serafuku</clothing>
<expression>happy, smile</expression>
<action>standing, holding, holding_briefcase</action>
<position>center_left</position>
</character_1>

<character_2>
<n>$character_2$</n>
<gender>1girl</gender>
<appearance>chibi, red_eyes, pink_hair</appearance>
<position>center_right</position>
</character_2>

<general_tags>
<count>2girls, multiple_girls</count>
<style>anime_style, digital_art</style>
<background>white_background, simple_background</background>
<quality>high_resolution, detailed</quality>
</general_tags>"""


def test_model_card_example_parses_completely():
    p = parse(MODEL_CARD_EXAMPLE)
    assert p.is_xml and p.warnings == []
    assert [c.index for c in p.characters] == [1, 2]
    assert p.characters[0].fields["clothing"] == "school_uniform, serafuku"
    assert p.characters[1].fields == {
        "n": "$character_2$",
        "gender": "1girl",
        "appearance": "chibi, red_eyes, pink_hair",
        "position": "center_right",
    }
    assert p.general_tags["count"] == "2girls, multiple_girls"


def test_build_reproduces_model_card_layout():
    assert build(parse(MODEL_CARD_EXAMPLE)) == MODEL_CARD_EXAMPLE


def test_official_assembler_layout_with_root_caption_and_style_line():
    text = "<style>style of mikozin</style>\n<image>\n  <caption>A girl waves.</caption>\n  <character_1>\n    <n></n>\n    <gender>1girl</gender>\n  </character_1>\n</image>"
    p = parse(text)
    assert p.root == "image" and p.caption == "A girl waves." and p.sections == {"style": "style of mikozin"}
    assert p.characters == [Character(1, {"n": "", "gender": "1girl"})]


@pytest.mark.parametrize("text", ["1girl, solo, smile, <3, >_<", "A girl & her cat under a tree.", "", "   "])
def test_plain_prompts_pass_through_untouched(text):
    p = parse(text)
    assert p.plain == text and not p.is_xml
    assert build(p) == text


def test_any_number_of_characters():
    p = parse("\n".join(f"<character_{i}><n>c{i}</n></character_{i}>" for i in range(1, 13)))
    assert [c.index for c in p.characters] == list(range(1, 13))


def test_unknown_tags_are_kept_with_warnings():
    p = parse("<character_1><hair_ornament>ribbon</hair_ornament></character_1>\n<mood>calm</mood>")
    assert p.characters[0].fields == {"hair_ornament": "ribbon"}
    assert p.sections == {"mood": "calm"}
    assert [str(w) for w in p.warnings] == [
        "line 1, column 14: unknown tag <hair_ornament> in <character_1> (kept; the model was not trained on it)",
        "line 2, column 1: unknown section <mood> (kept as text; the model was not trained on it)",
    ]


def test_entities_and_escapes_decode():
    p = parse("<caption>Tom &amp; Jerry &lt;3 &#x263A; &#65;</caption>")
    assert p.caption == "Tom & Jerry <3 \u263a A"
    assert parse(build(p)).caption == p.caption


@pytest.mark.parametrize(
    "text,message,line,column,tag",
    [
        ("<character_1>\n<n>a</n>\n", "<character_1> is never closed", 1, 1, "character_1"),
        (
            "<character_1>\n<gender>1girl</appearance>\n</character_1>",
            "</appearance> closes <gender>, which was opened at line 2, column 1",
            2,
            14,
            "appearance",
        ),
        ("<caption>x</caption>\n</general_tags>", "</general_tags> has no matching opening tag", 2, 1, "general_tags"),
        (
            "masterpiece\n<character_1><n>a</n></character_1>",
            "stray text 'masterpiece' outside any tag; put it inside a tag such as <caption>",
            1,
            1,
            None,
        ),
        (
            "<character_1>\n  smiling\n</character_1>",
            "stray text 'smiling' inside <character_1>; put it inside a tag such as <gender>",
            2,
            3,
            None,
        ),
        (
            "<character_1></character_1>\n<character_1></character_1>",
            "<character_1> appears twice (first at line 1, column 1)",
            2,
            1,
            "character_1",
        ),
        (
            "<character_1><n>a</n><n>b</n></character_1>",
            "<n> appears twice in <character_1> (first at line 1, column 14)",
            1,
            22,
            "n",
        ),
        ("<character_1><gender><b>x</b></gender></character_1>", "<b> cannot be nested inside <gender>", 1, 22, "b"),
        ("<character_0></character_0>", "character blocks are numbered from 1: <character_0>", 1, 1, "character_0"),
        (
            '<character_1 id="1"></character_1>',
            "<character_1> has attributes or stray characters; NewBie prompts use plain <tag>value</tag>",
            1,
            1,
            "character_1",
        ),
        (
            "<caption>&nbsp;</caption>",
            "unknown entity &nbsp; (only &amp; &lt; &gt; &quot; &apos; and numeric references are allowed)",
            1,
            10,
            None,
        ),
        (
            "<caption>x</caption>\n<caption>y</caption>",
            "<caption> appears twice at the top level (first at line 1, column 1)",
            2,
            1,
            "caption",
        ),
        ("<general_tags>\n<count>1girl</count>\n<count", "tag <count is not finished (missing '>')", 3, 1, "count"),
    ],
)
def test_common_mistakes_have_exact_messages(text, message, line, column, tag):
    with pytest.raises(XMLPromptError) as err:
        parse(text)
    e = err.value
    assert (e.message, e.line, e.column, e.tag) == (message, line, column, tag)
    assert str(e) == f"line {line}, column {column}: {message}"


ADVERSARIAL = {
    "billion_laughs": '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>\n<caption>&lol2;</caption>',
    "external_entity": '<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><caption>&xxe;</caption>',
    "deep_nesting": "<a>" * 10_000 + "</a>" * 10_000,
    "one_megabyte": "<caption>" + "x" * (1 << 20) + "</caption>",
    "nul_byte": "<caption>a\x00b</caption>",
    "undefined_entity": "<caption>&lol;</caption>",
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_inputs_are_rejected_quickly(name):
    start = time.perf_counter()
    with pytest.raises(XMLPromptError):
        parse(ADVERSARIAL[name])
    assert time.perf_counter() - start < 2.0


def test_invalid_utf8_bytes_are_positioned():
    with pytest.raises(XMLPromptError) as err:
        parse(b"<caption>ok</caption>\n<caption>\xff</caption>")
    assert (err.value.line, err.value.column) == (2, 10)
    assert err.value.message == "invalid UTF-8 byte 0xff (byte offset 31)"


def test_size_limit_message():
    with pytest.raises(
        XMLPromptError, match=f"prompt is {MAX_PROMPT_CHARS + 1} characters long; the limit is {MAX_PROMPT_CHARS}"
    ):
        parse("x" * (MAX_PROMPT_CHARS + 1))


def test_deep_nesting_names_the_tag():
    with pytest.raises(XMLPromptError, match=r"<a> is nested more than 16 levels deep"):
        parse("<a>" * 40 + "</a>" * 40)


def test_normalize_tags():
    assert normalize_tags(" long hair ,blue eyes,, rem (re:zero), already_\\(escaped\\) ") == (
        "long_hair, blue_eyes, rem_\\(re:zero\\), already_\\(escaped\\)"
    )


def test_builder_skips_empty_fields_but_keeps_name_and_normalises():
    text = build(
        characters=[{"gender": "1girl", "appearance": "long hair", "clothing": " "}],
        general_tags={"count": "1girl, solo", "style": ""},
        caption="A quiet street.",
        normalize=True,
    )
    assert text == (
        "<caption>A quiet street.</caption>\n\n<character_1>\n<n></n>\n<gender>1girl</gender>\n"
        "<appearance>long_hair</appearance>\n</character_1>\n\n<general_tags>\n<count>1girl, solo</count>\n</general_tags>"
    )


def test_pretty_indents():
    assert pretty("<character_1><n>a</n></character_1>") == "<character_1>\n  <n>a</n>\n</character_1>"


def test_bad_tag_names_are_refused_by_the_builder():
    with pytest.raises(ValueError, match="'bad tag' is not a valid tag name"):
        build(characters=[{"bad tag": "x"}])


# ---------------------------------------------------------------- property-based round trips

_value = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=40).map(str.strip)
_field_names = st.sampled_from(CHARACTER_FIELDS[1:])
_characters = st.lists(st.dictionaries(_field_names, _value, max_size=5), max_size=6)
_general = st.dictionaries(st.sampled_from(GENERAL_FIELDS), _value, max_size=6)


@settings(max_examples=150, deadline=None)
@given(_characters, _general, st.one_of(st.none(), _value))
def test_build_then_parse_is_identity(characters, general, caption):
    text = build(characters=characters, general_tags=general, caption=caption)
    parsed = parse(text) if text else StructuredPrompt(plain="")
    if not text:
        return
    expected_chars = [
        Character(i + 1, {"n": "", **{k: v for k, v in c.items() if v}}) for i, c in enumerate(characters)
    ]
    assert parsed.characters == expected_chars
    assert parsed.general_tags == {k: v for k, v in general.items() if v}
    assert parsed.caption == (caption if caption else None)
    assert parsed.warnings == []


@settings(max_examples=150, deadline=None)
@given(_characters, _general)
def test_parse_then_build_is_stable(characters, general):
    text = build(characters=characters, general_tags=general)
    if text:
        assert build(parse(text)) == text


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<>/&;!?abc_1 \n=\"'-[]x#")), max_size=80))
def test_arbitrary_text_never_crashes(text):
    try:
        parse(text)
    except XMLPromptError as err:
        assert err.line >= 1 and err.column >= 1
