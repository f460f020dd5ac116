"""Host tests: run against a real ComfyUI checkout named by COMFYUI_PATH (CPU only).

Skipped, with the reason shown, when COMFYUI_PATH is not set. The pack is imported the way
ComfyUI imports custom nodes: as a package named after its folder.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from pathlib import Path

import pytest

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
PACK_ROOT = Path(__file__).resolve().parents[2]
PACK_NAME = "newbie_pack_under_test"

SKIP_REASON = "real-host test: set COMFYUI_PATH to a ComfyUI checkout (and use its Python) to run it"

if not COMFYUI_PATH:

    def pytest_collection_modifyitems(config, items):
        here = Path(__file__).parent
        for item in items:
            if Path(str(item.fspath)).parent == here:
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))

else:
    sys.path.insert(0, COMFYUI_PATH)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args as _args

    _args.cpu = True

    @pytest.fixture(scope="session")
    def comfy():
        import comfy.model_management  # noqa: F401  (initialises devices on the CPU)
        import comfy.sample  # noqa: F401
        import comfy.samplers  # noqa: F401

        return sys.modules["comfy"]

    @pytest.fixture(scope="session")
    def pack(comfy):
        spec = importlib.util.spec_from_file_location(
            PACK_NAME, PACK_ROOT / "__init__.py", submodule_search_locations=[str(PACK_ROOT)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_NAME] = module
        spec.loader.exec_module(module)
        return module

    @pytest.fixture(scope="session")
    def node_classes(pack):
        extension = asyncio.run(pack.comfy_entrypoint())
        return {cls.define_schema().node_id: cls for cls in asyncio.run(extension.get_node_list())}

    @pytest.fixture()
    def models_dir(tmp_path, comfy):
        import folder_paths

        for key in ("diffusion_models", "text_encoders", "vae", "loras"):
            (tmp_path / key).mkdir()
            folder_paths.add_model_folder_path(key, str(tmp_path / key), is_default=True)
        yield tmp_path
        for key in ("diffusion_models", "text_encoders", "vae", "loras"):
            paths = folder_paths.folder_names_and_paths[key][0]
            if str(tmp_path / key) in paths:
                paths.remove(str(tmp_path / key))
        folder_paths.filename_list_cache.clear()
