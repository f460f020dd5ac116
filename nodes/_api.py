"""The one place the pack imports ComfyUI's node API; switching API versions is a one-line change here."""

from __future__ import annotations

import dataclasses

from comfy_api.latest import ComfyExtension, io  # noqa: F401  (re-exported)

_SCHEMA_FIELDS = {f.name for f in dataclasses.fields(io.Schema)} if dataclasses.is_dataclass(io.Schema) else set()


def schema(**kwargs) -> io.Schema:
    """``io.Schema`` that drops fields an older ComfyUI does not know (e.g. ``search_aliases``)."""
    if _SCHEMA_FIELDS:
        kwargs = {k: v for k, v in kwargs.items() if k in _SCHEMA_FIELDS}
    return io.Schema(**kwargs)
