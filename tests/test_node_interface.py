"""The node interface saved workflows depend on is pinned in tests/node_interface.json.

If a test here fails after you added a node or an optional input, regenerate the golden file:
``python -m tests.update_node_interface`` (it refuses changes that would break saved graphs).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from node_interface import REGENERATE, additions, breaking_changes, dump, load_golden

ROOT = Path(__file__).resolve().parents[1]


def _run_update(*args, golden: Path | None = None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if golden is not None:
        env["NEWBIE_NODE_INTERFACE"] = str(golden)
    return subprocess.run(
        [sys.executable, "-m", "tests.update_node_interface", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def current():
    """The interface the node modules declare now, read without ComfyUI (tests/comfy_stub.py, own process)."""
    proc = _run_update("--print")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_nodes_declare_exactly_the_pinned_interface(current):
    golden = load_golden()["nodes"]
    if current != golden:
        broken = breaking_changes(golden, current)
        lines = broken or additions(golden, current) or ["defaults, options or flags differ"]
        pytest.fail(
            "node interface differs from tests/node_interface.json:\n  "
            + "\n  ".join(lines)
            + (
                "\nThese would break saved workflows: keep ids, names and order; add optional inputs at the end."
                if broken
                else f"\nIf this is the change you meant, run `{REGENERATE}` and commit the JSON."
            )
        )


def test_golden_file_is_in_its_canonical_form():
    text = (ROOT / "tests" / "node_interface.json").read_text(encoding="utf-8")
    assert text == dump(json.loads(text)), f"reformat with `{REGENERATE}`"


def _node(*inputs, outputs=(("MODEL", None),)):
    ins = [dict(name=n, type=t, optional=o, widget=w, **({"default": d} if w else {})) for n, t, o, w, d in inputs]
    return {
        "inputs": ins,
        "widgets_values": [i["name"] for i in ins if i["widget"] and not i["optional"]]
        + [i["name"] for i in ins if i["widget"] and i["optional"]],
        "outputs": [{"name": n, "type": t} for t, n in outputs],
        "output_node": False,
        "deprecated": False,
    }


BASE = {
    "N": _node(
        ("model", "MODEL", False, False, None), ("steps", "INT", False, True, 17), ("cfg", "FLOAT", False, True, 5)
    )
}


def _changed(edit):
    new = copy.deepcopy(BASE)
    edit(new["N"])
    return new


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda n: n["inputs"].reverse(), "input #0"),
        (lambda n: n["inputs"][1].update(name="num_steps"), "input #1"),
        (lambda n: n["inputs"][1].update(default=20), "input #1"),
        (lambda n: n["inputs"][2].update(type="INT"), "input #2"),
        (lambda n: n["inputs"].pop(), "input 'cfg' removed"),
        (lambda n: n["inputs"].append(dict(name="x", type="INT", optional=False, widget=True, default=0)), "required"),
        (lambda n: n["inputs"].insert(1, dict(name="x", type="INT", optional=True, widget=True, default=0)), "#1"),
        (lambda n: n["outputs"].insert(0, {"name": "extra", "type": "LATENT"}), "outputs"),
        (lambda n: n.update(widgets_values=["cfg", "steps"]), "widget order"),
        (lambda n: n.update(deprecated=True), "deprecated"),
        (lambda n: n["inputs"][1].update(type="COMBO", options=["a"]), "input #1"),
    ],
)
def test_breaking_changes_are_named(edit, expected):
    problems = breaking_changes(BASE, _changed(edit))
    assert problems and expected in " ".join(problems), problems


def test_additive_changes_are_allowed_and_listed():
    new = _changed(
        lambda n: (
            n["inputs"].append(dict(name="extra", type="STRING", optional=True, widget=True, default="")),
            n["widgets_values"].append("extra"),
            n["outputs"].append({"name": "info", "type": "STRING"}),
        )
    )
    new["M"] = copy.deepcopy(BASE["N"])
    assert breaking_changes(BASE, new) == []
    assert additions(BASE, new) == ["M: new node", "N: new optional input 'extra'", "N: new output 'info'"]
    assert breaking_changes(BASE, {}) == ["N: node removed (saved graphs name it)"]


def test_combo_choices_may_be_added_but_not_removed():
    old = {"N": _node(("mode", "COMBO", False, True, "a"))}
    old["N"]["inputs"][0]["options"] = ["a", "b"]
    grown = copy.deepcopy(old)
    grown["N"]["inputs"][0]["options"] = ["c", "a", "b"]
    assert breaking_changes(old, grown) == []
    assert additions(old, grown) == ["N.mode: new options ['c']"]
    shrunk = copy.deepcopy(old)
    shrunk["N"]["inputs"][0]["options"] = ["a"]
    assert breaking_changes(old, shrunk) == ["N.mode: options ['b'] removed (saved graphs may hold them)"]


def test_update_command_refuses_a_breaking_change(tmp_path, current):
    golden = load_golden()
    first = golden["nodes"]["NewBieSampler"]["inputs"][4]
    assert first["name"] == "seed"
    first["name"] = "noise_seed"  # as if the node had renamed noise_seed -> seed
    path = tmp_path / "golden.json"
    path.write_text(dump(golden), encoding="utf-8")
    (tmp_path / "current.json").write_text(json.dumps(current), encoding="utf-8")
    proc = _run_update("--current", str(tmp_path / "current.json"), golden=path)
    assert proc.returncode == 1
    assert "refusing" in proc.stderr and "NewBieSampler: input #4" in proc.stderr and "--breaking" in proc.stderr
    assert json.loads(path.read_text(encoding="utf-8")) == golden  # nothing written


def test_builder_nodes_offer_every_xml_field_and_keep_their_order():
    """The builders' widgets are literal; a field the XML schema gains must be appended to them, not inserted."""
    from newbie_core.xml_prompt import CHARACTER_FIELDS, GENERAL_FIELDS

    nodes = load_golden()["nodes"]
    for node_id, fields in (("NewBieCharacter", CHARACTER_FIELDS), ("NewBieGeneralTags", GENERAL_FIELDS)):
        widgets = [w for w in nodes[node_id]["widgets_values"] if w != "normalize_tags"]
        missing = [f for f in fields if f not in widgets]
        assert not missing, f"{node_id}: XML fields {missing} have no widget; append them as optional inputs"


def test_example_workflows_store_widget_values_in_the_pinned_order():
    """A saved graph holds one value per widget, in order; one saved before an optional widget was appended simply
    stops early (the frontend gives the new widget its default), but it can never hold more values than widgets."""
    nodes = load_golden()["nodes"]
    for path in sorted((ROOT / "example_workflows").glob("*.json")):
        for node in json.loads(path.read_text(encoding="utf-8"))["nodes"]:
            pinned = nodes.get(node["type"])
            if pinned is None:
                continue
            widgets = pinned["widgets_values"]
            optional = {i["name"] for i in pinned["inputs"] if i["optional"]}
            needed = len([w for w in widgets if w.split(":")[0] not in optional])
            saved = node.get("widgets_values", [])
            assert needed <= len(saved) <= len(widgets), (
                f"{path.name}: node {node['id']} ({node['type']}) saves {saved}, the interface has widgets {widgets}"
            )
