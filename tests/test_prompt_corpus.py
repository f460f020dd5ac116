"""The prompt corpus shared with the browser editor's tests (tests/web/run.mjs runs the same file).

parse -> build must reproduce each case's ``formatted`` text, keep every non-empty value, and be stable; error cases
must fail with the recorded message. The editor's Format and ±Character buttons use the JS twin of ``build``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from newbie_core.xml_prompt import XMLPromptError, build, parse

CORPUS = json.loads((Path(__file__).resolve().parent / "xml_prompt_corpus.json").read_text(encoding="utf-8"))["cases"]


def content(prompt) -> dict:
    """Everything a prompt says that formatting must keep (empty values are not content)."""
    return {
        "plain": prompt.plain,
        "caption": (prompt.caption or "").strip() or None,
        "characters": sorted(
            (c.index, sorted((k, v) for k, v in c.fields.items() if v.strip() or k == "n")) for c in prompt.characters
        ),
        "general_tags": sorted((k, v) for k, v in prompt.general_tags.items() if v.strip()),
        "sections": sorted((k, v) for k, v in prompt.sections.items() if v.strip() or k == "style"),
    }


@pytest.mark.parametrize("case", CORPUS, ids=[c["name"] for c in CORPUS])
def test_corpus_case(case):
    if "error" in case:
        with pytest.raises(XMLPromptError) as info:
            parse(case["text"])
        assert str(info.value) == case["error"]
        return
    prompt = parse(case["text"])
    assert [str(w) for w in prompt.warnings] == case.get("warnings", [])
    formatted = build(prompt)
    assert formatted == case["formatted"]
    assert content(parse(formatted)) == content(prompt), "formatting lost or changed content"
    assert build(parse(formatted)) == formatted  # formatting twice changes nothing


def test_corpus_covers_what_the_editor_used_to_lose():
    texts = " ".join(c["text"] for c in CORPUS)
    for needle in ("<style>", "<notes>", "<hair>", "<mood>", "<character_12>", "&amp;", "&#", "<image>"):
        assert needle in texts, needle
