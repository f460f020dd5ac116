"""Package-level contracts: ComfyUI entry point, host-free core, registry metadata."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_pack_imports_without_comfyui_and_exposes_only_the_v3_entry_point():
    comfy_loaded_before = "comfy" in sys.modules  # host tests in the same session may have loaded it
    spec = importlib.util.spec_from_file_location(
        "newbie_pack_plain", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.comfy_entrypoint)
    assert module.WEB_DIRECTORY == "./web"
    assert not hasattr(module, "NODE_CLASS_MAPPINGS")  # it would make ComfyUI skip comfy_entrypoint
    assert comfy_loaded_before or "comfy" not in sys.modules


def test_newbie_core_never_imports_comfyui():
    for path in (ROOT / "newbie_core").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            )
            for name in names:
                assert name.split(".")[0] not in ("comfy", "comfy_api", "folder_paths", "nodes"), (
                    f"{path}: imports {name}"
                )


def test_pyproject_declares_registry_floor_and_test_extra():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert meta["tool"]["comfy"]["requires-comfyui"] == ">=0.3.64"
    assert "pytest>=7.4" in meta["project"]["optional-dependencies"]["test"]
    assert not any(d.startswith("comfy") for d in meta["project"]["dependencies"])


def test_example_workflows_list_their_model_files():
    import json

    for path in sorted((ROOT / "example_workflows").glob("*.json")):
        wf = json.loads(path.read_text(encoding="utf-8"))
        names = {m["name"] for m in wf["models"]}
        widgets = {v for n in wf["nodes"] for v in n.get("widgets_values", []) if isinstance(v, str)}
        assert names <= widgets, f"{path.name}: models entries must match the loader widgets"
        assert all(m["url"].startswith("https://huggingface.co/") for m in wf["models"])
