"""The pinned interface (tests/node_interface.json) read from the real ComfyUI's schema objects.

CI checks the golden file through tests/comfy_stub.py; this proves the stand-in reads what the real host builds,
including the option lists the host fills in (model files, ComfyUI's sampler names).
"""

from __future__ import annotations

from node_interface import REGENERATE, describe, host_differences, load_golden


def test_real_host_registers_exactly_the_pinned_nodes(node_classes):
    golden = load_golden()["nodes"]
    assert list(node_classes) == list(golden), f"node list differs from the golden file; run `{REGENERATE}`"


def test_real_host_schemas_match_the_golden_file(node_classes):
    golden = load_golden()["nodes"]
    problems = [
        p for node_id, cls in node_classes.items() for p in host_differences(golden[node_id], describe(cls), node_id)
    ]
    assert not problems, "\n".join(problems)


def test_host_fills_the_markers_with_its_own_lists(node_classes):
    import comfy.samplers

    golden = {i["name"]: i.get("options") for i in load_golden()["nodes"]["NewBieSampler"]["inputs"]}
    host = {i["name"]: i.get("options") for i in describe(node_classes["NewBieSampler"])["inputs"]}
    ours = [o for o in golden["sampler_name"] if o != "<comfy:samplers>"]
    assert ours and host["sampler_name"] == ours + list(comfy.samplers.KSampler.SAMPLERS)
    assert host["scheduler"] == ["newbie_official"] + list(comfy.samplers.KSampler.SCHEDULERS)
