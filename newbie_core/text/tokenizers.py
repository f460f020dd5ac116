"""Tokenizers from the blobs users already have, behind one small interface.

* ComfyUI's repackaged text-encoder files embed a serialized sentencepiece model under the
  key ``spiece_model``;
* official HF folders ship ``tokenizer.model`` (sentencepiece) and/or ``tokenizer.json``;
* the embedded tiny default uses a byte tokenizer (no files at all).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError


@dataclass
class Tokenizer:
    """Text -> ids with the model's special tokens. ``encode_plain`` adds none."""

    bos_id: int | None
    eos_id: int | None
    pad_id: int
    add_bos: bool
    add_eos: bool

    def encode_plain(self, text: str) -> list[int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode_plain_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        raise NotImplementedError(f"{type(self).__name__} cannot report token offsets")

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int] | None]]:
        """``encode(text)`` plus each token's ``[start, end)`` character range in ``text`` (None for BOS/EOS)."""
        ids, offsets = self.encode_plain_offsets(text)
        if self.add_bos and self.bos_id is not None:
            ids, offsets = [self.bos_id] + ids, [None] + offsets
        if self.add_eos and self.eos_id is not None:
            ids, offsets = ids + [self.eos_id], offsets + [None]
        return ids, offsets

    def encode(self, text: str) -> list[int]:
        ids = self.encode_plain(text)
        if self.add_bos and self.bos_id is not None:
            ids = [self.bos_id] + ids
        if self.add_eos and self.eos_id is not None:
            ids = ids + [self.eos_id]
        return ids


class SentencePieceTokenizer(Tokenizer):
    def __init__(
        self, proto: bytes, add_bos: bool, add_eos: bool, pad_id: int | None = None, source: str = "tokenizer"
    ):
        import sentencepiece

        self.source = source
        self.proto = bytes(proto)
        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(self.proto)
        except Exception as exc:  # sentencepiece raises RuntimeError/OSError variants
            raise CheckpointError(f"{source}: not a valid sentencepiece model ({exc})") from None
        bos = self.sp.bos_id()
        eos = self.sp.eos_id()
        pad = self.sp.pad_id() if pad_id is None else pad_id
        super().__init__(bos if bos >= 0 else None, eos if eos >= 0 else None, max(pad, 0), add_bos, add_eos)

    def encode_plain(self, text: str) -> list[int]:
        return list(self.sp.EncodeAsIds(text))

    def encode_plain_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        try:  # character (code point) offsets; sentencepiece >= 0.2.1
            out = self.sp.encode(text, out_type="offset_mapping")
        except (ValueError, TypeError, RuntimeError):
            raise NotImplementedError(
                "this sentencepiece version cannot report token offsets (needs sentencepiece >= 0.2.1)"
            ) from None
        return list(out["ids"]), [tuple(o) for o in out["offsets"]]


class JSONTokenizer(Tokenizer):
    """An HF ``tokenizer.json`` through the ``tokenizers`` library (already a transformers dependency)."""

    def __init__(self, path: Path, add_bos: bool, add_eos: bool, bos: str, eos: str, pad: str):
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self.tok = HFTokenizer.from_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path}: not a valid tokenizer.json ({exc})") from None
        ids = {name: self.tok.token_to_id(name) for name in (bos, eos, pad)}
        super().__init__(ids[bos], ids[eos], ids[pad] if ids[pad] is not None else 0, add_bos, add_eos)

    def encode_plain(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_plain_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.tok.encode(text, add_special_tokens=False)
        return list(enc.ids), [tuple(o) for o in enc.offsets]


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes shifted past the special ids; for the embedded smoke-test model only."""

    def __init__(self, bos_id: int, eos_id: int, pad_id: int, offset: int, add_bos: bool, add_eos: bool):
        super().__init__(bos_id, eos_id, pad_id, add_bos, add_eos)
        self.offset = offset

    def encode_plain(self, text: str) -> list[int]:
        return [b + self.offset for b in text.encode("utf-8")]

    def encode_plain_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        ids, offsets = [], []
        for i, ch in enumerate(text):
            for b in ch.encode("utf-8"):
                ids.append(b + self.offset)
                offsets.append((i, i + 1))
        return ids, offsets


def tokenizer_from_folder(folder: Path, add_bos: bool, add_eos: bool, specials: tuple[str, str, str]):
    """``tokenizer.json`` or ``tokenizer.model`` beside HF weights, or None."""
    for name in ("tokenizer.json",):
        if (folder / name).is_file():
            return JSONTokenizer(folder / name, add_bos, add_eos, *specials)
    # (XLM-R's raw sentencepiece.bpe.model is not used: its ids lack the fairseq offset)
    for name in ("tokenizer.model", "spiece.model"):
        if (folder / name).is_file():
            return SentencePieceTokenizer((folder / name).read_bytes(), add_bos, add_eos, source=str(folder / name))
    return None
