"""XML <region> tags: validation with positions, stripping from the encoder text, and the browser validator's parity."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from newbie_core.layout import Box, RegionError, parse_box, parse_layers, parse_region_lines
from newbie_core.xml_prompt import XMLPromptError, extract_regions, parse, pretty

ROOT = Path(__file__).resolve().parents[1]

PROMPT = """<character_1>
  <n>a</n>
  <region>0,0,500,1000</region>
</character_1>

<character_2><n>b</n><region> 500, 0 ,1000,1000 </region></character_2>

<general_tags>
  <count>2girls</count>
</general_tags>"""


def test_regions_are_read_and_stripped_with_their_lines():
    text, regions = extract_regions(PROMPT)
    assert regions == {1: Box(0, 0, 500, 1000), 2: Box(500, 0, 1000, 1000)}
    assert text == PROMPT.replace("  <region>0,0,500,1000</region>\n", "").replace(
        "<region> 500, 0 ,1000,1000 </region>", ""
    )
    assert parse(text).characters[0].fields == {"n": "a"}
    crlf = PROMPT.replace("\n", "\r\n")
    assert extract_regions(crlf)[0] == text.replace("\n", "\r\n")


def test_keep_tags_and_prompts_without_regions_are_untouched():
    assert extract_regions(PROMPT, keep_tags=True) == (PROMPT, extract_regions(PROMPT)[1])
    plain = "\ufeff<character_1><n>a</n></character_1>"
    assert extract_regions(plain) == (plain, {})
    assert extract_regions("1girl, region") == ("1girl, region", {})
    assert extract_regions("1girl, <region>") == ("1girl, <region>", {})  # not XML: plain text
    with pytest.raises(XMLPromptError, match="</character_1> closes <region>"):
        extract_regions("<character_1><region>1,2,3,4</character_1>")


def test_region_is_known_layout_data_and_survives_pretty():
    p = parse(PROMPT)
    assert p.warnings == []
    assert p.characters[0].fields["region"] == "0,0,500,1000"
    assert "<region>0,0,500,1000</region>" in pretty(PROMPT)
    # outside a character block it is an unknown tag like any other
    warned = parse("<general_tags><region>1,2,3,4</region></general_tags>").warnings
    assert [w.message for w in warned] == [
        "unknown tag <region> in <general_tags> (kept; the model was not trained on it)"
    ]


BAD = [
    ("<character_1>\n  <region>0,0,1500,1000</region>\n</character_1>", 2, 11, "x1=1500 is outside 0-1000"),
    ("<character_1><region>5,5,1,9</region></character_1>", 1, 22,
     "is empty or inverted: x1 (1) must be greater than x0 (5)"),
    ("<character_1><region>  a, b</region></character_1>", 1, 24,
     'needs four numbers x0,y0,x1,y1 from 0 to 1000, got "a, b"'),
    ("<character_1><region></region></character_1>", 1, 14, 'needs four numbers x0,y0,x1,y1 from 0 to 1000, got ""'),
    ("<character_1><region>0,0,-1,5</region></character_1>", 1, 22, "x1=-1 is outside 0-1000"),
    ("<character_1><region>0,0,10.5,0</region></character_1>", 1, 22,
     "is empty or inverted: y1 (0) must be greater than y0 (0)"),
    ("<character_1><region>0,0,1000.5,5</region></character_1>", 1, 22, "x1=1000.5 is outside 0-1000"),
    ("<character_1><region>0,0,١٠,5</region></character_1>", 1, 22,
     'needs four numbers x0,y0,x1,y1 from 0 to 1000, got "0,0,١٠,5"'),
]  # fmt: skip


@pytest.mark.parametrize("text, line, column, message", BAD)
def test_bad_regions_have_positions(text, line, column, message):
    with pytest.raises(XMLPromptError) as info:
        parse(text)
    e = info.value
    assert (e.line, e.column, e.tag) == (line, column, "region")
    assert e.message == f"<region> of <character_1> {message}"


def test_box_parser_and_widget_lines():
    assert parse_box("0, 0, 250.5, 1000") == Box(0, 0, 250.5, 1000)
    assert str(parse_box([0, 0, 250.5, 1000])) == "0,0,250.5,1000"
    assert parse_box("0,0,1000,1000").is_full_frame
    assert parse_region_lines("character_1=0,0,5,5; character_2=5,5,9,9\n") == {
        1: Box(0, 0, 5, 5),
        2: Box(5, 5, 9, 9),
    }
    with pytest.raises(RegionError, match=r"^character_0=1,2,3,4: \"character_0\" is not a character name"):
        parse_region_lines("character_0=1,2,3,4")


def test_layer_selection():
    assert parse_layers("all") is None and parse_layers("") is None
    assert parse_layers("0-3, 7,2") == (0, 1, 2, 3, 7)
    for bad in ("3-1", "x", "1,,2", "-1"):
        with pytest.raises(RegionError, match=f'layers "{bad}" must be layer numbers or ranges'):
            parse_layers(bad)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_browser_validator_gives_the_same_region_messages():
    cases = [t for t, *_ in BAD] + [PROMPT]
    script = (
        f"import {{ parsePrompt }} from {json.dumps((ROOT / 'web' / 'xml_validate.js').as_uri())};\n"
        f"const out = {json.dumps(cases)}.map((t) => {{ try {{ const p = parsePrompt(t); return 'ok ' + "
        "p.warnings.length; } catch (e) { return e.message; } });\n"
        "console.log(JSON.stringify(out));"
    )
    proc = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    expected = []
    for text in cases:
        try:
            expected.append(f"ok {len(parse(text).warnings)}")
        except XMLPromptError as exc:
            expected.append(str(exc))
    assert json.loads(proc.stdout) == expected


WIDGET_CASES = [
    "character_1=0,0,500,1000\ncharacter_2=500,0,1000,1000",
    "character_1=0,0,5,5; character_2=5,5,9.5,9",
    "",
    "character_1=0,0,500",
    "girl =1,2,3,4",
    "character_0=1,2,3,4",
    "character_1",
    "character_1=0,0,5,5\ncharacter_1=1,1,2,2",
    "character_2=5,0,1,9",
]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_region_canvas_helpers_match_the_server():
    """web/region_boxes.js (the canvas on NewBie Character Regions) parses widget text exactly as the node does."""
    script = (
        f"import {{ parseRegionLines, formatRegionLines, boxFromDrag }} from "
        f"{json.dumps((ROOT / 'web' / 'region_boxes.js').as_uri())};\n"
        f"const out = {json.dumps(WIDGET_CASES)}.map((t) => {{ try {{ return parseRegionLines(t); }} "
        "catch (e) { return e.message; } });\n"
        "out.push(formatRegionLines({2: [500, 0, 1000, 1000], 1: boxFromDrag(100, 200, 0, 0, 200, 400)}));\n"
        "out.push(boxFromDrag(5, 5, 5, 50, 100, 100));\n"
        "console.log(JSON.stringify(out));"
    )
    proc = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    for text, js in zip(WIDGET_CASES, got):
        try:
            py = {str(i): b.as_list() for i, b in parse_region_lines(text).items()}
        except RegionError as exc:
            py = str(exc)
        assert js == py, text
    assert got[-2] == "character_1=0,0,500,500\ncharacter_2=500,0,1000,1000"
    assert parse_region_lines(got[-2])[1] == Box(0, 0, 500, 500)
    assert got[-1] is None  # a zero-width drag draws nothing
