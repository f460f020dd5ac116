"""A stand-in for the parts of ComfyUI the pack's node modules touch at import time (tests only).

CI has no ComfyUI, yet the node interface must be pinned there. This module installs:

- ``comfy_api.latest`` with a small ``io`` whose inputs and outputs carry the same attribute names as the real
  V3 schema objects (``id``, ``optional``, ``default``, ``force_input``, ``options``, ``control_after_generate``,
  ``get_io_type()``), so one reader (``tests/node_interface.py``) works on both;
- every other host module (``comfy.*``, ``folder_paths``, ``latent_preview``, ...) as a permissive placeholder, except
  the few values that shape a node's inputs: model-folder listings, the input/output folders and ComfyUI's
  sampler/scheduler names, which become markers such as ``<folder:loras>`` so the golden file records
  "host-provided" instead of a machine's file list.

Only ever install it in a fresh interpreter (``python -m tests.update_node_interface`` or the subprocess the golden
test starts): it must never leak into a process that imports the real ComfyUI or checks that core is host-free.
"""

from __future__ import annotations

import dataclasses
import importlib.abc
import importlib.machinery
import sys
import tempfile
import types
from pathlib import Path

HOST_ROOTS = ("comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "latent_preview", "node_helpers")
COMFY_SAMPLERS = "<comfy:samplers>"
COMFY_SCHEDULERS = "<comfy:schedulers>"


def folder_marker(key: str) -> str:
    return f"<folder:{key}>"


# ------------------------------------------------------------------------------------------------ io schema


class _Input:
    widget = False

    def __init__(self, id, display_name=None, optional=False, tooltip=None, **extra):
        self.id = id
        self.display_name = display_name
        self.optional = optional
        self.tooltip = tooltip
        self.extra = extra

    def get_io_type(self):
        return self.io_type


class _WidgetInput(_Input):
    widget = True

    def __init__(self, id, display_name=None, optional=False, tooltip=None, default=None, force_input=None, **extra):
        super().__init__(id, display_name, optional, tooltip, **extra)
        self.default = default
        self.force_input = force_input
        self.control_after_generate = extra.get("control_after_generate")
        self.options = list(extra["options"]) if "options" in extra else None


class _Output:
    def __init__(self, id=None, display_name=None, tooltip=None, is_output_list=False):
        self.id = id
        self.display_name = display_name if display_name else id
        self.tooltip = tooltip
        self.is_output_list = is_output_list

    def get_io_type(self):
        return self.io_type


def _comfy_type(io_type: str, widget: bool) -> type:
    base = _WidgetInput if widget else _Input
    input_cls = type("Input", (base,), {"io_type": io_type})
    output_cls = type("Output", (_Output,), {"io_type": io_type})
    return type(io_type.title(), (), {"io_type": io_type, "Input": input_cls, "Output": output_cls})


@dataclasses.dataclass
class Schema:
    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list = dataclasses.field(default_factory=list)
    outputs: list = dataclasses.field(default_factory=list)
    hidden: list = dataclasses.field(default_factory=list)
    description: str = ""
    search_aliases: list = dataclasses.field(default_factory=list)
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    not_idempotent: bool = False


class ComfyNode:
    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError


class NodeOutput:
    def __init__(self, *args, ui=None, expand=None, block_execution=None):
        self.args = args
        self.result = args
        self.ui = ui


class ComfyExtension:
    async def on_load(self) -> None:
        return None

    async def get_node_list(self) -> list:
        return []


_WIDGETS = {"Boolean": "BOOLEAN", "Int": "INT", "Float": "FLOAT", "String": "STRING", "Combo": "COMBO"}
_SOCKETS = {
    "Model": "MODEL",
    "Clip": "CLIP",
    "Vae": "VAE",
    "Conditioning": "CONDITIONING",
    "Latent": "LATENT",
    "Image": "IMAGE",
    "Mask": "MASK",
    "Sampler": "SAMPLER",
    "Sigmas": "SIGMAS",
    "Noise": "NOISE",
    "Guider": "GUIDER",
    "AnyType": "*",
}


_ENUMS = {
    "UploadType": ("image", "audio", "video", "model"),
    "FolderType": ("input", "output", "temp"),
    "NumberDisplay": ("number", "slider"),
    "ControlAfterGenerate": ("fixed", "increment", "decrement", "randomize"),
}


def _make_io() -> types.ModuleType:
    io = types.ModuleType("comfy_api.latest.io")
    io.Schema, io.ComfyNode, io.NodeOutput = Schema, ComfyNode, NodeOutput
    for name, io_type in _WIDGETS.items():
        setattr(io, name, _comfy_type(io_type, widget=True))
    for name, io_type in _SOCKETS.items():
        setattr(io, name, _comfy_type(io_type, widget=False))
    io.Custom = lambda io_type: _comfy_type(io_type, widget=False)
    for name, members in _ENUMS.items():
        setattr(io, name, types.SimpleNamespace(**{m: m for m in members}))

    def missing(name):
        raise AttributeError(f"tests/comfy_stub.py: io.{name} is not stubbed; add it to _WIDGETS or _SOCKETS")

    io.__getattr__ = missing
    return io


# ------------------------------------------------------------------------------------------------ host modules


class _Anything(type):
    """A class whose every attribute is another such class: import-time uses (subclassing, calls,
    attribute chains, decorators) all succeed and do nothing."""

    def __getattr__(cls, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _Anything(name, (), {})

    def __iter__(cls):
        return iter(())

    def __call__(cls, *args, **kwargs):
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]  # used as a decorator
        return _Anything("result", (), {})


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        value = _Anything(name, (), {})
        setattr(self, name, value)
        return value


class _HostFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in HOST_ROOTS:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _PlaceholderModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []


def install() -> None:
    """Make ``import comfy_api.latest``, ``import comfy.*``, ``import folder_paths`` ... succeed in this process."""
    if any(isinstance(f, _HostFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _HostFinder())
    latest = _PlaceholderModule("comfy_api.latest")
    latest.__path__ = []
    latest.io = _make_io()
    latest.ComfyExtension = ComfyExtension
    sys.modules["comfy_api.latest"] = latest

    import comfy.samplers
    import folder_paths

    folder_paths.get_filename_list = lambda key: [folder_marker(key)]
    # input/output/temp folders hold one file named like a marker, so a node listing them records "host-provided"
    root = Path(tempfile.mkdtemp(prefix="newbie-stub-"))
    for kind in ("input", "output", "temp"):
        (root / kind).mkdir()
        (root / kind / folder_marker(kind)).touch()
        setattr(folder_paths, f"get_{kind}_directory", lambda kind=kind: str(root / kind))
    comfy.samplers.KSampler = type("KSampler", (), {"SAMPLERS": [COMFY_SAMPLERS], "SCHEDULERS": [COMFY_SCHEDULERS]})
