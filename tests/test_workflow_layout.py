"""Every example workflow opens tidy: no two nodes' rectangles overlap, title bar included.

Globs example_workflows/, so a workflow another change adds is checked too. A node's saved ``pos`` is the top-left
of its body; the title bar (LiteGraph's NODE_TITLE_HEIGHT, 30 px in ComfyUI's frontend) sits above it.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TITLE_HEIGHT = 30
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))


def rectangle(node) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of a node including its title bar; collapsed nodes keep only the title bar."""
    x, y = node["pos"][0], node["pos"][1]
    w, h = node["size"][0], node["size"][1]
    if node.get("flags", {}).get("collapsed"):
        h = 0
    return x, y - TITLE_HEIGHT, x + w, y + h


def overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def overlapping_pairs(workflow: dict) -> list[str]:
    nodes = workflow["nodes"]
    return [
        f"node {a['id']} ({a['type']}) overlaps node {b['id']} ({b['type']})"
        for a, b in itertools.combinations(nodes, 2)
        if overlaps(rectangle(a), rectangle(b))
    ]


def test_there_are_example_workflows():
    assert len(WORKFLOWS) >= 3


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_no_two_nodes_overlap(path):
    problems = overlapping_pairs(json.loads(path.read_text(encoding="utf-8")))
    assert not problems, f"{path.name}: " + "; ".join(problems)


def test_title_bar_counts_as_part_of_the_node():
    below = {"id": 1, "type": "A", "pos": [0, 100], "size": [100, 80]}
    above = {"id": 2, "type": "B", "pos": [50, 0], "size": [100, 80]}  # body ends at 80, title of A starts at 70
    assert overlapping_pairs({"nodes": [below, above]}) == ["node 1 (A) overlaps node 2 (B)"]
    above["pos"] = [50, -20]  # ends at 60: clear of A's title bar
    assert overlapping_pairs({"nodes": [below, above]}) == []
