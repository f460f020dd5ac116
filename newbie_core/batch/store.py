"""Image files of a batch: encoded in memory, written to a hidden ``.part`` file, fsynced, then renamed into place.

A reader therefore sees either no ``<id>.png`` or a whole one. The part file's name carries the host
and process id, so a rerun can remove the leftovers of processes that were killed (and only those).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
from pathlib import Path

PART_SUFFIX = ".part"
BATCH_KEY = "newbie_batch"  # PNG text chunk naming the batch item an image belongs to


def encode_png(result, extra: dict) -> bytes:
    """The PNG bytes of a one-image result with the full generation metadata plus ``extra`` (id, list line)."""
    from PIL.PngImagePlugin import PngInfo

    from ..pipeline import png_metadata

    info = PngInfo()
    for key, value in png_metadata(result).items():
        info.add_itxt(key, value)
    info.add_itxt(BATCH_KEY, json.dumps(extra, ensure_ascii=False, sort_keys=True))
    buf = io.BytesIO()
    result.images[0].save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str | None:
    """Hex digest of the file, or None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def _host() -> str:
    return socket.gethostname().replace(os.sep, "_") or "host"


def part_path(folder: Path, item_id: str) -> Path:
    return folder / f".{item_id}.{_host()}.{os.getpid()}{PART_SUFFIX}"


def write_part(folder: Path, item_id: str, data: bytes) -> Path:
    """Write ``data`` to this process's part file for ``item_id`` and make it durable."""
    tmp = part_path(folder, item_id)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def commit(tmp: Path, final: Path) -> None:
    """Rename the part file over ``final`` (atomic) and make the rename durable before it is recorded."""
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _fsync_dir(folder: Path) -> None:
    if os.name == "nt":
        return  # directories cannot be opened for fsync on Windows
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    if os.name == "nt":
        return True  # os.kill(pid, 0) would terminate it there; leave the part files alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_dead_parts(folder: Path) -> int:
    """Delete part files left by killed processes of this host; parts of live or other hosts' processes stay."""
    removed = 0
    host = _host()
    for path in folder.glob(f".*{PART_SUFFIX}"):
        stem = path.name[1 : -len(PART_SUFFIX)]
        head, _, pid = stem.rpartition(".")
        if not head.endswith("." + host) or not pid.isdigit():
            continue
        if int(pid) != os.getpid() and not _alive(int(pid)):
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def batch_info(path: Path) -> dict | None:
    """The batch chunk of a PNG we wrote, or None for any other file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            text = getattr(im, "text", {}) or {}
            return json.loads(text[BATCH_KEY]) if BATCH_KEY in text else None
    except Exception:  # noqa: BLE001  (not a PNG, truncated, unreadable: not ours)
        return None
