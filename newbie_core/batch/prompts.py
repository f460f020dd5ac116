"""Prompt lists for ``batch``: JSONL, plain text or CSV, read whole and checked before any work.

Every problem is reported as ``FILE:LINE: what`` so a list of thousands of lines can be fixed
without guessing. Values are typed by the same spec as the command-line flags they override.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import NewBieError

FORMATS = ("auto", "jsonl", "csv", "text")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".txt": "text"}
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


class PromptListError(NewBieError):
    """A prompt list that cannot be used as it is; the message names the file and line."""


@dataclass(frozen=True)
class FieldSpec:
    """How one per-item setting is typed: ``kind`` is int, float, str or bool (a switch flag); ``choices`` limits
    str values."""

    kind: type
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class PromptItem:
    line: int  # 1-based line where the item starts
    id: str
    prompt: str
    overrides: dict = field(default_factory=dict)  # setting name -> typed value


def detect_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    found = _SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise PromptListError(
            f"{path}: cannot tell the format from the name; give --format jsonl, csv or text "
            f"(known endings: {', '.join(_SUFFIXES)})"
        )
    return found


def read_prompt_list(path, fields: dict[str, FieldSpec], fmt: str = "auto") -> list[PromptItem]:
    """All items of the list at ``path``; raises PromptListError naming the first bad line."""
    path = Path(path)
    fmt = detect_format(path, fmt)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PromptListError(f"{path}: cannot read the prompt list: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PromptListError(f"{path}:{line}: not UTF-8 text (byte {exc.start})") from None
    reader = {"jsonl": _read_jsonl, "csv": _read_csv, "text": _read_text}[fmt]
    items = reader(path, text, fields)
    if not items:
        raise PromptListError(f"{path}: no prompts in the list")
    _check_unique_ids(path, items)
    return items


# ------------------------------------------------------------------------------ formats


def _read_text(path: Path, text: str, fields) -> list[PromptItem]:
    items = []
    for n, raw in enumerate(text.splitlines(), start=1):
        if raw.strip():
            items.append(PromptItem(n, _line_id(n), raw.strip()))
    return items


def _read_jsonl(path: Path, text: str, fields) -> list[PromptItem]:
    items = []
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise PromptListError(f"{path}:{n}: not valid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise PromptListError(f'{path}:{n}: expected a JSON object like {{"prompt": "..."}}')
        items.append(_item(path, n, {k: v for k, v in obj.items() if v is not None}, fields, from_text=False))
    return items


def _read_csv(path: Path, text: str, fields) -> list[PromptItem]:
    rows = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(rows, None)
        if header is None:
            return []
        header = [h.strip() for h in header]
        seen = set()
        for name in header:
            if name in seen:
                raise PromptListError(f"{path}:1: column {name!r} appears twice in the header")
            seen.add(name)
            _check_key(path, 1, name, fields, "column")
        if "prompt" not in header:
            raise PromptListError(f"{path}:1: the header has no 'prompt' column")
        items = []
        start = rows.line_num + 1
        for row in rows:
            if any(cell.strip() for cell in row):
                if len(row) != len(header):
                    raise PromptListError(f"{path}:{start}: {len(row)} fields, but the header has {len(header)}")
                values = {k: v for k, v in zip(header, row) if v.strip() or k == "prompt"}
                items.append(_item(path, start, values, fields, from_text=True))
            start = rows.line_num + 1
    except csv.Error as exc:
        raise PromptListError(f"{path}:{rows.line_num}: malformed CSV: {exc}") from None
    return items


# ------------------------------------------------------------------------------ one item


def _line_id(line: int) -> str:
    """Id of an item that has none: its line number, zero-padded so file names sort in list order."""
    return f"{line:06d}"


def _check_key(path, line, key, fields, what="key") -> None:
    if key not in fields and key not in ("prompt", "id"):
        known = ", ".join(["prompt", "id", *fields])
        raise PromptListError(f"{path}:{line}: unknown {what} {key!r}; known: {known}")


def _item(path: Path, line: int, values: dict, fields: dict[str, FieldSpec], from_text: bool) -> PromptItem:
    for key in values:
        _check_key(path, line, key, fields)
    prompt = values.get("prompt")
    if not isinstance(prompt, str):
        raise PromptListError(f"{path}:{line}: 'prompt' is missing or not a string")
    if not prompt.strip():
        raise PromptListError(f"{path}:{line}: empty prompt")
    item_id = values.get("id", _line_id(line))
    if isinstance(item_id, int) and not isinstance(item_id, bool):
        item_id = str(item_id)
    if not isinstance(item_id, str) or not _ID.fullmatch(item_id.strip()):
        raise PromptListError(
            f"{path}:{line}: id {item_id!r} cannot be a file name: use up to 128 letters, digits, '_', '.' "
            "and '-', starting with a letter, digit or '_'"
        )
    overrides = {}
    for key, value in values.items():
        if key in ("prompt", "id"):
            continue
        overrides[key] = _typed(path, line, key, value, fields[key], from_text)
    return PromptItem(line, item_id.strip(), prompt, overrides)


_BOOL_TEXT = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _typed(path, line, key, value, spec: FieldSpec, from_text: bool):
    names = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}
    try:
        if spec.kind is bool:
            typed = _BOOL_TEXT[value.strip().lower()] if from_text and isinstance(value, str) else value
            if not isinstance(typed, bool):
                raise ValueError
        elif spec.kind is str:
            if not isinstance(value, str):
                raise ValueError
            typed = value
        elif from_text:
            typed = spec.kind(value.strip())
        elif isinstance(value, bool) or not isinstance(value, (int, float) if spec.kind is float else int):
            raise ValueError
        else:
            typed = spec.kind(value)
    except (ValueError, KeyError):
        raise PromptListError(f"{path}:{line}: {key!r} must be {names[spec.kind]}, got {value!r}") from None
    if isinstance(typed, float) and not math.isfinite(typed):
        raise PromptListError(f"{path}:{line}: {key!r} must be a finite number, got {value!r}")
    if spec.choices is not None and typed not in spec.choices:
        raise PromptListError(f"{path}:{line}: {key!r} must be one of {', '.join(spec.choices)}, got {typed!r}")
    return typed


def _check_unique_ids(path: Path, items: list[PromptItem]) -> None:
    """Ids become file names: refuse repeats, also ones differing only in case (one file on Windows and macOS)."""
    first: dict[str, PromptItem] = {}
    for item in items:
        other = first.setdefault(item.id.lower(), item)
        if other is item:
            continue
        if other.id == item.id:
            raise PromptListError(f"{path}:{item.line}: duplicate id {item.id!r} (first on line {other.line})")
        raise PromptListError(
            f"{path}:{item.line}: id {item.id!r} differs from {other.id!r} (line {other.line}) only in case; "
            "they would be one file on Windows and macOS"
        )
