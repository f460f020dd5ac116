"""zh and ja locales (ComfyUI's locales/<lang>/main.json + nodeDefs.json) cover every pinned node.

A node added to tests/node_interface.json without translations fails here with its name; add its entry to
locales/zh/nodeDefs.json and locales/ja/nodeDefs.json (display_name, description, every input, every output).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from node_interface import CONTROL, load_golden

ROOT = Path(__file__).resolve().parents[1]
LANGS = ("zh", "ja")
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff]")
#: Nodes most users meet first; each has a Chinese help page web/docs/<id>/zh.md.
MAIN_NODES = ("NewBieDiTLoader", "NewBieTextEncoderLoader", "NewBieTextEncode", "NewBieXMLPrompt", "NewBieSampler")


def node_defs(lang: str) -> dict:
    return json.loads((ROOT / "locales" / lang / "nodeDefs.json").read_text(encoding="utf-8"))


def locale_problems(lang: str, defs: dict, golden: dict) -> list[str]:
    where = f"locales/{lang}/nodeDefs.json"
    problems = []
    for node_id, node in golden.items():
        entry = defs.get(node_id)
        if entry is None:
            problems.append(f"{where}: node {node_id} has no entry (display_name, description, inputs, outputs)")
            continue
        for key in ("display_name", "description"):
            if not str(entry.get(key, "")).strip():
                problems.append(f"{where}: {node_id} has no {key}")
        if not CJK.search(entry.get("description", "")):
            problems.append(f"{where}: {node_id} description is not translated")
        inputs = entry.get("inputs", {})
        for inp in node["inputs"]:
            got = inputs.get(inp["name"], {})
            if not got.get("name") or not got.get("tooltip"):
                problems.append(f"{where}: {node_id} input {inp['name']!r} needs a name and a tooltip")
            if inp.get(CONTROL) and CONTROL not in inputs:
                problems.append(f"{where}: {node_id} needs a name for {CONTROL}")
        known = {i["name"] for i in node["inputs"]} | {CONTROL}
        problems += [f"{where}: {node_id} translates unknown input {k!r}" for k in inputs if k not in known]
        outputs = entry.get("outputs", {})
        for index, out in enumerate(node["outputs"]):
            got = outputs.get(str(index), {})
            if not got.get("tooltip") or (out["name"] and not got.get("name")):
                problems.append(f"{where}: {node_id} output {index} needs a tooltip (and a name if it has one)")
        if len(outputs) > len(node["outputs"]):
            problems.append(f"{where}: {node_id} translates {len(outputs)} outputs, it has {len(node['outputs'])}")
    problems += [f"{where}: {n} is not a node of this pack (stale entry)" for n in defs if n not in golden]
    return problems


@pytest.mark.parametrize("lang", LANGS)
def test_every_pinned_node_is_translated(lang):
    problems = locale_problems(lang, node_defs(lang), load_golden()["nodes"])
    assert not problems, "\n".join(problems)


def test_a_node_without_translations_is_named():
    golden = load_golden()["nodes"]
    before = locale_problems("zh", node_defs("zh"), golden)
    after = locale_problems("zh", node_defs("zh"), {**golden, "NewBieBrandNew": golden["NewBieLoRA"]})
    assert [p for p in after if p not in before] == [
        "locales/zh/nodeDefs.json: node NewBieBrandNew has no entry (display_name, description, inputs, outputs)"
    ]


@pytest.mark.parametrize("lang", LANGS)
def test_main_json_translates_the_pack_categories(lang):
    main = json.loads((ROOT / "locales" / lang / "main.json").read_text(encoding="utf-8"))
    assert {"NewBie", "prompt"} <= set(main["nodeCategories"])  # the segments core does not translate already


def test_main_nodes_have_chinese_help_pages():
    for node_id in MAIN_NODES:
        page = ROOT / "web" / "docs" / node_id / "zh.md"
        assert page.is_file(), f"missing {page.relative_to(ROOT)}"
        assert CJK.search(page.read_text(encoding="utf-8")), f"{page.relative_to(ROOT)} is not in Chinese"
