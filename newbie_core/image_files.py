"""Writing images: PNG, JPEG or WebP with the generation metadata each can hold, atomically, never overwriting.

* PNG: iTXt chunks ``parameters`` (the A1111-style text) and ``newbie`` (JSON of every setting).
* JPEG / WebP: EXIF UserComment holds ``parameters`` (where A1111/Civitai tools look) and an XMP
  packet holds both texts (``newbie:parameters``, ``newbie:settings``).

The image is encoded in memory first; then the bytes go to a temporary file beside the target,
which is hard-linked to the target name (fails if it exists: no overwrite, even in a race) and
removed. That short file step finishes even if Ctrl-C arrives during it, so afterwards the
target either exists completely or not at all, and no temporary file is left.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import signal
import threading
from pathlib import Path
from xml.sax.saxutils import escape

from .errors import NewBieError
from .validation import OutputTarget

EXIF_IFD = 0x8769
USER_COMMENT = 0x9286
XMP_NAMESPACE = "https://github.com/newbie-image-nodes/newbie-image-nodes/ns/1.0/"


class WriteError(NewBieError, OSError):
    """An output could not be written (permissions, disk full...); the message names the user's path."""


def user_comment(text: str) -> bytes:
    """EXIF UserComment bytes: ASCII when possible, else UNICODE (UTF-16BE, as piexif and A1111 write it)."""
    try:
        return b"ASCII\0\0\0" + text.encode("ascii")
    except UnicodeEncodeError:
        return b"UNICODE\0" + text.encode("utf-16-be")


def read_user_comment(raw: bytes) -> str:
    head, body = raw[:8], raw[8:]
    if head == b"UNICODE\0":
        return body.decode("utf-16-be")
    return body.decode("ascii" if head.startswith(b"ASCII") else "utf-8", errors="replace")


def xmp_packet(metadata: dict[str, str]) -> bytes:
    fields = "".join(f"<newbie:{k}>{escape(v)}</newbie:{k}>" for k, v in metadata.items())
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:newbie="{XMP_NAMESPACE}">{fields}</rdf:Description>'
        '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode()


def encode(image, fmt: str, metadata: dict[str, str]) -> bytes:
    """The file's bytes; ``metadata`` has ``parameters`` (text) and ``newbie`` (JSON)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    buf = io.BytesIO()
    if fmt == "PNG":
        info = PngInfo()
        for key, value in metadata.items():
            info.add_itxt(key, value)
        image.save(buf, format="PNG", pnginfo=info)
    else:
        exif = Image.Exif()
        exif.get_ifd(EXIF_IFD)[USER_COMMENT] = user_comment(metadata.get("parameters", ""))
        xmp = xmp_packet({"parameters": metadata.get("parameters", ""), "settings": metadata.get("newbie", "")})
        extra = {"quality": 95} if fmt == "JPEG" else {"quality": 95, "method": 4}
        image.convert("RGB").save(buf, format=fmt, exif=exif.tobytes(), xmp=xmp, **extra)
    return buf.getvalue()


@contextlib.contextmanager
def _ctrl_c_deferred():
    """Hold a Ctrl-C that arrives inside the block until the block is done (main thread, default handler only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:
        yield
        return
    pending = []
    signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            raise KeyboardInterrupt


def _write_new(path: Path, data: bytes) -> None:
    folder = path.parent
    tmp = folder / f".newbie-{os.getpid()}-{secrets.token_hex(4)}.part"  # name fixed before it exists
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            os.link(tmp, path)  # fails if path exists
        except FileExistsError:
            raise
        except OSError:  # file systems without hard links
            if path.exists():
                raise FileExistsError(path) from None
            os.rename(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def save(image, target: OutputTarget, metadata: dict[str, str]) -> Path:
    """Write ``image`` to ``target`` (folders created); raises WriteError naming the target path."""
    data = encode(image, target.format, metadata)
    path = target.path
    try:
        with _ctrl_c_deferred():
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_new(path, data)
    except FileExistsError:
        raise WriteError(f"{path} already exists; nothing was overwritten") from None
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
