"""Lazy, validated reading of safetensors weight files (single files and sharded folders).

Only safetensors is accepted: pickled formats (.ckpt/.pt/.pth/.bin) can run code when
loaded, so they are refused with a message instead of being unpickled.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .dtypes import FLOAT8_DTYPES, dtype_names, parse_dtype  # noqa: F401  (the dtype table lives there)
from .errors import CheckpointError

log = logging.getLogger("newbie")

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
MAX_HEADER_BYTES = 100 * 1024 * 1024

_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        _ST_DTYPES[_name] = getattr(torch, _attr)


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    file: Path


@dataclass
class SafetensorsHeader:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Parse and validate a safetensors header without reading tensor data.

    Detects truncated downloads (data ending before the last tensor) and files that are
    not safetensors at all, naming the file and the first affected key.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: pickled checkpoints ({path.suffix}) are not loaded because unpickling can run code; "
            "use the .safetensors release of this model"
        )
    if path.suffix.lower() == ".gguf":
        raise CheckpointError(f"{path}: GGUF files are not loaded by this pack; use the .safetensors release")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > MAX_HEADER_BYTES or n + 8 > size:
            raise CheckpointError(
                f"{path}: not a safetensors file or truncated (header claims {n} bytes, file has {size})"
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_size = size - 8 - n
    tensors: dict[str, TensorInfo] = {}
    for key, entry in header.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], tuple(int(s) for s in entry["shape"]), entry["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"{path}: corrupt safetensors header entry for key {key!r}") from None
        if end > data_size:
            raise CheckpointError(
                f"{path}: file is truncated: tensor {key!r} needs bytes up to {end} of the data section "
                f"but only {data_size} are present (re-download the file)"
            )
        if start > end:
            raise CheckpointError(f"{path}: corrupt offsets for key {key!r}")
        tensors[key] = TensorInfo(dtype, shape, path)
    return SafetensorsHeader(path, tensors, {str(k): str(v) for k, v in metadata.items()})


class TensorReader:
    """Reads tensors one at a time from one or more validated safetensors files (memory-mapped)."""

    def __init__(self, headers: list[SafetensorsHeader]):
        self.headers = headers
        self.tensors: dict[str, TensorInfo] = {}
        for h in headers:
            for key, info in h.tensors.items():
                if key in self.tensors:
                    raise CheckpointError(f"{h.path}: key {key!r} also appears in {self.tensors[key].file}")
                self.tensors[key] = info
        self._handles: dict[Path, object] = {}

    @classmethod
    def open(cls, paths) -> TensorReader:
        return cls([read_header(p) for p in paths])

    @property
    def metadata(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for h in self.headers:
            merged.update(h.metadata)
        return merged

    def shape(self, key: str) -> tuple[int, ...]:
        return self.tensors[key].shape

    def get(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        info = self.tensors[key]
        handle = self._handles.get(info.file)
        if handle is None:
            try:
                handle = safe_open(str(info.file), framework="pt", device="cpu")
            except Exception as exc:  # safetensors raises its own error types
                raise CheckpointError(f"{info.file}: cannot open as safetensors ({exc})") from None
            self._handles[info.file] = handle
        try:
            return handle.get_tensor(key)
        except Exception as exc:
            raise CheckpointError(f"{info.file}: cannot read tensor {key!r} ({exc})") from None

    def close(self) -> None:
        self._handles.clear()


def sharded_files(index_path: Path) -> list[Path]:
    """Shard files listed by a ``*.safetensors.index.json`` (HF layout), checked to exist."""
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index_path}: not a valid safetensors index ({exc})") from None
    files = []
    for name in dict.fromkeys(weight_map.values()):
        shard = index_path.parent / name
        if not shard.is_file():
            raise CheckpointError(f"{index_path}: shard {name!r} listed in the index is missing")
        files.append(shard)
    return files


def weight_files(path: Path) -> tuple[list[Path], Path]:
    """A single safetensors file, or a folder's (sharded with an index json, or plain) safetensors files.

    Returns the files and the folder that may hold tokenizer/config files beside them.
    """
    if path.is_file() and path.name.endswith(".safetensors.index.json"):
        return sharded_files(path), path.parent
    if path.is_file():
        index = shard_index_for(path) if shard_position(path) else None
        if index is not None:
            log.info("%s is one shard of %s: loading the whole set", path.name, index.name)
            return sharded_files(index), path.parent
        return [path], path.parent
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such file or folder")
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if indexes:
        return sharded_files(indexes[0]), path
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: folder holds no .safetensors weights")
    return files, path


# ------------------------------------------------------------------------------ quantised files

#: Per-tensor-scaled float8 formats we can dequantise exactly (weight * scale); anything else is refused.
_DEQUANTISABLE = {"float8_e4m3fn", "float8_e5m2"}
_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
_QUANT_AUX_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant", ".weight_scale_2")


class QuantisedWeights:
    """Reads a ``TensorReader`` as plain weights, undoing ComfyUI's scaled-fp8 storage.

    ComfyUI stores quantised text encoders and models either the old way (a ``scaled_fp8`` marker and a
    per-tensor ``<layer>.scale_weight``) or the new way (``<layer>.comfy_quant`` JSON with a ``format``,
    ``<layer>.weight_scale``, optionally ``_quantization_metadata`` in the header). Casting such fp8 tensors
    without their scale gives wrong numbers silently, so every scaled weight is multiplied back here, and
    block-scaled formats (nvfp4, mxfp8, ...) are refused by name.
    """

    def __init__(self, reader: TensorReader, where):
        self.reader, self.where = reader, where
        self.scales: dict[str, str] = {}
        self.aux: set[str] = set()
        keys = reader.tensors
        formats = self._declared_formats()
        for key in keys:
            if key.endswith("scaled_fp8"):
                self.aux.add(key)
            elif key.endswith(_QUANT_AUX_SUFFIXES):
                self.aux.add(key)
                if key.endswith(".comfy_quant"):
                    formats.setdefault(key[: -len(".comfy_quant")], self._comfy_quant_format(key))
            for suffix in _SCALE_SUFFIXES:
                if key.endswith(suffix):
                    self.aux.add(key)
                    self.scales[key[: -len(suffix)] + ".weight"] = key
        for layer, fmt in formats.items():
            if fmt not in _DEQUANTISABLE:
                raise CheckpointError(
                    f"{where}: layer {layer!r} is stored in the quantised format {fmt!r}, which this loader cannot "
                    "dequantise exactly; use the bf16/fp16 (or plain/scaled fp8) release of this file"
                )
        for weight, scale in self.scales.items():
            if weight in keys and math.prod(keys[scale].shape) != 1:
                raise CheckpointError(
                    f"{where}: {scale!r} holds {math.prod(keys[scale].shape)} scales (block-wise quantisation); "
                    "only per-tensor scaled fp8 is dequantised; use the bf16/fp16 release of this file"
                )

    def _declared_formats(self) -> dict[str, str]:
        raw = self.reader.metadata.get("_quantization_metadata")
        if not raw:
            return {}
        try:
            layers = json.loads(raw).get("layers", {})
            return {str(name): str(conf.get("format")) for name, conf in layers.items()}
        except (ValueError, AttributeError):
            raise CheckpointError(f"{self.where}: unreadable _quantization_metadata in the file header") from None

    def _comfy_quant_format(self, key: str) -> str:
        try:
            return str(json.loads(bytes(self.reader.get(key).tolist()).decode("utf-8")).get("format"))
        except (ValueError, AttributeError, TypeError):
            raise CheckpointError(f"{self.where}: unreadable quantisation entry {key!r}") from None

    @property
    def quantised(self) -> bool:
        return bool(self.scales)

    def get(self, key: str) -> torch.Tensor:
        """The tensor as the model means it: scaled fp8 weights come back in float32, times their scale."""
        tensor = self.reader.get(key)
        scale_key = self.scales.get(key)
        if scale_key is None:
            return tensor
        return tensor.float() * self.reader.get(scale_key).float().reshape(())


# ------------------------------------------------------------------------------ sharded sets


def shard_index_for(path: Path) -> Path | None:
    """The ``*.safetensors.index.json`` beside ``path`` that lists it as one of its shards, if any."""
    for index in sorted(path.parent.glob("*.safetensors.index.json")):
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        except (OSError, ValueError, AttributeError):
            continue
        if path.name in set(weight_map.values()):
            return index
    return None


_SHARD_NAME = re.compile(r"-(\d{5})-of-(\d{5})\.safetensors$")


def shard_position(path: Path) -> tuple[int, int] | None:
    """(k, n) for a file named ``...-0000k-of-0000n.safetensors`` (one shard of n), else None."""
    m = _SHARD_NAME.search(path.name)
    return (int(m.group(1)), int(m.group(2))) if m else None
