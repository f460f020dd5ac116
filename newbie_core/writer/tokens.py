"""The text each token id stands for, indexed so the decoder can find tokens by prefix.

Built once per tokenizer (about a second for Gemma's 262k pieces) and cached on it. Ids
whose text is not a whole character sequence on its own (special and control tokens,
byte-fallback pieces of multi-byte characters, ids past the tokenizer's end) map to None
and are never proposed.
"""

from __future__ import annotations

import bisect
import re

from ..text.tokenizers import ByteTokenizer, JSONTokenizer, SentencePieceTokenizer, Tokenizer

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>\Z")
_SPECIAL_PIECE = re.compile(r"<[^<>\s]+>\Z")
_END = "\U0010ffff"


def _piece_text(piece: str) -> str | None:
    m = _BYTE_PIECE.match(piece)
    if m:
        b = int(m.group(1), 16)
        return chr(b) if b < 0x80 else None
    return piece.replace("\u2581", " ")


def _token_texts(tokenizer: Tokenizer, vocab_size: int) -> list[str | None]:
    texts: list[str | None] = [None] * vocab_size
    if isinstance(tokenizer, ByteTokenizer):
        for b in range(0x80):
            if b + tokenizer.offset < vocab_size:
                texts[b + tokenizer.offset] = chr(b)
    elif isinstance(tokenizer, SentencePieceTokenizer):
        sp = tokenizer.sp
        for i in range(min(vocab_size, sp.GetPieceSize())):
            if sp.IsControl(i) or sp.IsUnknown(i) or sp.IsUnused(i):
                continue
            piece = sp.IdToPiece(i)
            if not sp.IsByte(i) and _SPECIAL_PIECE.match(piece):
                continue  # user-defined specials such as <start_of_turn>, <unused12>
            texts[i] = _piece_text(piece)
    elif isinstance(tokenizer, JSONTokenizer):
        special = {int(i) for i in tokenizer.tok.get_added_tokens_decoder()}
        for i in range(min(vocab_size, tokenizer.tok.get_vocab_size())):
            if i in special:
                continue
            piece = tokenizer.tok.id_to_token(i)
            if piece is not None:
                texts[i] = _piece_text(piece)
    else:
        raise TypeError(f"the prompt writer cannot read token texts from {type(tokenizer).__name__}")
    for special in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id):
        if special is not None and 0 <= special < vocab_size:
            texts[special] = None
    return [t if t else None for t in texts]


class TokenTable:
    """``texts[id]`` plus a sorted index for "all tokens starting with this prefix"."""

    def __init__(self, texts: list[str | None]):
        self.texts = texts
        order = sorted((t, i) for i, t in enumerate(texts) if t is not None)
        self.sorted_texts = [t for t, _ in order]
        self.sorted_ids = [i for _, i in order]
        self.by_text: dict[str, list[int]] = {}
        for t, i in order:
            self.by_text.setdefault(t, []).append(i)

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer, vocab_size: int) -> TokenTable:
        cache = tokenizer.__dict__.setdefault("_writer_token_tables", {})
        if vocab_size not in cache:
            cache[vocab_size] = cls(_token_texts(tokenizer, vocab_size))
        return cache[vocab_size]

    def prefix_range(self, prefix: str) -> tuple[int, int]:
        """Positions in ``sorted_texts`` of the tokens that start with ``prefix``."""
        lo = bisect.bisect_left(self.sorted_texts, prefix)
        hi = bisect.bisect_left(self.sorted_texts, prefix + _END, lo)
        return lo, hi

    def single_char_ids(self, ch: str) -> list[int]:
        return self.by_text.get(ch, [])


def special_id(tokenizer: Tokenizer, piece: str) -> int | None:
    """The id of a special piece such as ``<start_of_turn>`` when the vocabulary has one."""
    if isinstance(tokenizer, SentencePieceTokenizer):
        i = tokenizer.sp.PieceToId(piece)
        return i if tokenizer.sp.IdToPiece(i) == piece and not tokenizer.sp.IsUnknown(i) else None
    if isinstance(tokenizer, JSONTokenizer):
        return tokenizer.tok.token_to_id(piece)
    return None
