"""``DIR/manifest.jsonl``: one JSON line per finished image, safe to share between processes and machines.

Each line is written with one ``write`` on an ``O_APPEND`` descriptor while holding an exclusive
POSIX record lock (``fcntl.lockf``, which NFS honours too), then fsynced; a line is only written
after its PNG is in place. A process killed in the middle of a line leaves a torn tail without a
newline: readers ignore it and the next writer starts a fresh line, so no finished image is ever
recorded twice or half.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger("newbie")

try:  # POSIX
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.lockf(fd, fcntl.LOCK_EX)

    def _unlock(fd: int) -> None:
        fcntl.lockf(fd, fcntl.LOCK_UN)

except ImportError:  # Windows: lock the first byte (blocking with retries)
    import msvcrt

    def _lock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
                return
            except OSError:
                continue

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _pread(fd: int, n: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, n, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # Windows; O_APPEND writes still go to the end
    return os.read(fd, n)


class Manifest:
    """The finished images of one output folder, by id (the last line for an id wins)."""

    NAME = "manifest.jsonl"

    def __init__(self, folder: Path):
        self.path = Path(folder) / self.NAME
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0), 0o666)
        self.entries: dict[str, dict] = {}
        self.offsets: dict[str, int] = {}  # id -> byte offset of its latest line
        self._read_to = 0
        self.torn_lines = 0
        with self.locked():
            self.refresh()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @contextlib.contextmanager
    def locked(self):
        try:
            _lock(self.fd)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot lock {self.path} ({exc.strerror}); the output folder needs a file system with POSIX locks "
                "(local disks and NFS with lockd have them)",
            ) from None
        try:
            yield
        finally:
            _unlock(self.fd)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def refresh(self) -> None:
        """Read the lines appended since the last call (call with the lock held)."""
        end = self.size()
        if end <= self._read_to:
            return
        data = _pread(self.fd, end - self._read_to, self._read_to)
        last_newline = data.rfind(b"\n")
        if last_newline < 0:
            return  # only a torn tail so far
        pos = self._read_to
        for raw in data[: last_newline + 1].split(b"\n")[:-1]:
            start, pos = pos, pos + len(raw) + 1
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
                item_id = entry["id"]
            except (ValueError, KeyError, TypeError):
                self.torn_lines += 1
                log.warning(
                    "%s: ignoring an unreadable line at byte %d (a run was killed while writing it)", self.path, start
                )
                continue
            self.entries[item_id] = entry
            self.offsets[item_id] = start
        self._read_to = pos

    def append(self, entry: dict) -> None:
        """Record one finished image (call with the lock held, after its file is in place)."""
        line = json.dumps(entry, ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n"
        end = self.size()
        if end and _pread(self.fd, 1, end - 1) != b"\n":
            line = b"\n" + line  # seal a torn tail left by a killed writer
        view = memoryview(line)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        os.fsync(self.fd)
        self.refresh()
