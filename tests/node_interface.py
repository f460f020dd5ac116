"""The pack's public node interface as data, and the rule for changing it.

Saved workflows refer to nodes by id, to inputs by name and to widget values *by position*, and links refer to
outputs by index. ``describe`` reads those facts from the V3 schema objects (the real ComfyUI ones on a host, the
stand-ins of ``tests/comfy_stub.py`` in CI); ``breaking_changes`` says which differences would break a saved graph.

Allowed without ceremony (``python -m tests.update_node_interface`` writes them): new nodes, new *optional* inputs
appended after all existing inputs, new outputs appended after existing ones, new choices in a combo (saved graphs
store the chosen string, so adding choices anywhere is harmless; removing one is not). Anything else (renaming, reordering,
removing, a type or default change, a new required input) is a breaking, versioned change: the update command refuses
it unless run with ``--breaking "why"``, which bumps ``interface_version``; prefer a new node id plus ComfyUI's
deprecation (``is_deprecated=True``) and node replacement (``io.NodeReplace``) so old graphs keep loading.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

#: The golden file; NEWBIE_NODE_INTERFACE points the update command elsewhere (its own tests use a copy).
GOLDEN = Path(os.environ.get("NEWBIE_NODE_INTERFACE") or Path(__file__).resolve().parent / "node_interface.json")
REGENERATE = "python -m tests.update_node_interface"
CONTROL = "control_after_generate"


def is_host_marker(option) -> bool:
    """Options the host fills in (model files, ComfyUI's samplers) are recorded as ``<...>`` markers."""
    return isinstance(option, str) and option.startswith("<") and option.endswith(">")


def _describe_input(inp) -> dict:
    widget = hasattr(inp, "force_input") and not inp.force_input
    entry = {"name": inp.id, "type": inp.get_io_type(), "optional": bool(inp.optional), "widget": widget}
    if widget:
        entry["default"] = inp.default
        options = getattr(inp, "options", None)
        if options is not None:
            entry["options"] = list(options)
        if getattr(inp, CONTROL, None):
            entry[CONTROL] = True
    return entry


def describe(cls) -> dict:
    """One node's id, inputs (declared order), saved widget order and outputs."""
    schema = cls.define_schema()
    inputs = [_describe_input(i) for i in schema.inputs]
    # The frontend lays out required inputs before optional ones; widgets_values follow that order, and a
    # control_after_generate widget saves its mode right after its value.
    widgets = []
    for inp in [i for i in inputs if not i["optional"]] + [i for i in inputs if i["optional"]]:
        if inp["widget"]:
            widgets.append(inp["name"])
            if inp.get(CONTROL):
                widgets.append(f"{inp['name']}:{CONTROL}")
    outputs = [{"name": o.display_name, "type": o.get_io_type()} for o in schema.outputs]
    return {
        "inputs": inputs,
        "widgets_values": widgets,
        "outputs": outputs,
        "output_node": bool(schema.is_output_node),
        "deprecated": bool(schema.is_deprecated),
    }


def describe_all(classes) -> dict:
    return {cls.define_schema().node_id: describe(cls) for cls in classes}


def load_golden() -> dict:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


def dump(golden: dict) -> str:
    """Stable JSON with one input or output per line, so a diff shows exactly what changed."""

    def one(value) -> str:
        return json.dumps(value, ensure_ascii=False)

    lines = ["{"]
    for key in ("about", "interface_version", "changes"):
        lines.append(f"  {one(key)}: {one(golden[key])},")
    lines.append('  "nodes": {')
    nodes = list(golden["nodes"].items())
    for n, (node_id, node) in enumerate(nodes):
        lines.append(f"    {one(node_id)}: {{")
        for key in ("inputs", "outputs"):
            items = [f"      {one(item)}" for item in node[key]]
            lines.append(f"     {one(key)}: [" + ("\n" + ",\n".join(items) + "\n     ]," if items else "],"))
        lines.append(f'     "widgets_values": {one(node["widgets_values"])},')
        lines.append(f'     "output_node": {one(node["output_node"])}, "deprecated": {one(node["deprecated"])}')
        lines.append("    }" + ("," if n < len(nodes) - 1 else ""))
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def breaking_changes(old: dict, new: dict) -> list[str]:
    """Differences between two ``nodes`` maps that would break a saved graph, one line each."""
    problems = []
    for node_id, before in old.items():
        after = new.get(node_id)
        if after is None:
            problems.append(f"{node_id}: node removed (saved graphs name it)")
            continue
        old_inputs, new_inputs = before["inputs"], after["inputs"]
        for i, inp in enumerate(old_inputs):
            if i >= len(new_inputs):
                problems.append(f"{node_id}: input {inp['name']!r} removed")
            elif _without_options(new_inputs[i]) != _without_options(inp):
                problems.append(f"{node_id}: input #{i} was {_show(inp)}, now {_show(new_inputs[i])}")
            else:
                gone = [o for o in inp.get("options", []) if o not in new_inputs[i].get("options", [])]
                if gone:
                    problems.append(f"{node_id}.{inp['name']}: options {gone} removed (saved graphs may hold them)")
        for inp in new_inputs[len(old_inputs) :]:
            if not inp["optional"]:
                problems.append(f"{node_id}: new input {inp['name']!r} is required; new inputs must be optional")
        if after["widgets_values"][: len(before["widgets_values"])] != before["widgets_values"]:
            problems.append(
                f"{node_id}: widget order {before['widgets_values']} became {after['widgets_values']} "
                "(saved widget values are positional)"
            )
        if after["outputs"][: len(before["outputs"])] != before["outputs"]:
            problems.append(f"{node_id}: outputs {before['outputs']} became {after['outputs']} (links use indices)")
        for key in ("output_node", "deprecated"):
            if before[key] != after[key]:
                problems.append(f"{node_id}: {key} changed from {before[key]} to {after[key]}")
    return problems


def additions(old: dict, new: dict) -> list[str]:
    lines = [f"{n}: new node" for n in new if n not in old]
    for node_id, before in old.items():
        after = new.get(node_id)
        if after is None:
            continue
        lines += [f"{node_id}: new optional input {i['name']!r}" for i in after["inputs"][len(before["inputs"]) :]]
        for b, a in zip(before["inputs"], after["inputs"]):
            added = [o for o in a.get("options", []) if o not in b.get("options", [])]
            if added and a["name"] == b["name"]:
                lines.append(f"{node_id}.{a['name']}: new options {added}")
        lines += [f"{node_id}: new output {o['name']!r}" for o in after["outputs"][len(before["outputs"]) :]]
    return lines


def _without_options(inp: dict) -> dict:
    return {k: v for k, v in inp.items() if k != "options"}


def _show(inp: dict) -> str:
    return json.dumps(inp, ensure_ascii=False)


def host_differences(golden_node: dict, host_node: dict, node_id: str) -> list[str]:
    """Compare a golden entry with what the real ComfyUI reports: equal, except that host markers in a combo's
    options stand for whatever the host lists there (model files, ComfyUI's sampler names)."""
    problems = []
    g_inputs, h_inputs = golden_node["inputs"], host_node["inputs"]
    if [i["name"] for i in g_inputs] != [i["name"] for i in h_inputs]:
        return [f"{node_id}: inputs {[i['name'] for i in g_inputs]} on the host are {[i['name'] for i in h_inputs]}"]
    for g, h in zip(g_inputs, h_inputs):
        g_rest = {k: v for k, v in g.items() if k != "options"}
        h_rest = {k: v for k, v in h.items() if k != "options"}
        if g_rest != h_rest:
            problems.append(f"{node_id}: input {_show(g_rest)} is {_show(h_rest)} on the host")
        if "options" in g:
            fixed = [o for o in g["options"] if not is_host_marker(o)]
            host_options = h.get("options") or []
            if [o for o in host_options if o in fixed] != fixed:
                problems.append(f"{node_id}.{g['name']}: options {fixed} missing or reordered in {host_options}")
            if fixed == g["options"] and host_options != fixed:
                problems.append(f"{node_id}.{g['name']}: options {host_options} on the host, golden has {fixed}")
    for key in ("widgets_values", "outputs", "output_node", "deprecated"):
        if golden_node[key] != host_node[key]:
            problems.append(f"{node_id}: {key} {golden_node[key]} is {host_node[key]} on the host")
    return problems
