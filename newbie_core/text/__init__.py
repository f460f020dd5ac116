"""Text conditioning: Gemma3 hidden states + Jina CLIP v2 pooled vector, split as in training."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import torch

from ..weights import parse_dtype
from .conditioning import (
    ESCAPE_MODES,
    GEMMA_MAX_TOKENS,
    JINA_MAX_TOKENS,
    PRESETS,
    SYSTEM_PROMPTS,
    apply_escapes,
    gemma_text,
    system_prompt_for,
)
from .gemma import GemmaTextEncoder, load_gemma
from .jina import JinaTextConfig, JinaTextModel, load_jina
from .tokenizers import Tokenizer

log = logging.getLogger("newbie")

__all__ = [
    "ESCAPE_MODES",
    "apply_escapes",
    "GEMMA_MAX_TOKENS",
    "PRESETS",
    "SYSTEM_PROMPTS",
    "EncodedPrompts",
    "GemmaTextEncoder",
    "JinaTextConfig",
    "JinaTextModel",
    "TextEncoders",
    "gemma_text",
    "load_gemma",
    "load_jina",
    "load_text_encoders",
    "pad_batch",
    "system_prompt_for",
]


class TruncationWarning(UserWarning):
    """A prompt was longer than the encoder saw in training and its tail was dropped."""


@dataclass
class EncodedPrompts:
    """``hidden`` [B, L, 2560] right-padded Gemma states, ``mask`` [B, L] (1 = token), ``pooled`` [B, 1024].

    ``spans``: per prompt, the token range of each block (``newbie_core.regions.PromptSpans``), when the
    tokenizer reports offsets.
    """

    hidden: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor
    dropped_tokens: list[int] = field(default_factory=list)
    spans: list = field(default_factory=list)

    def __iter__(self):
        """``hidden, mask, pooled = encoders.encode(...)``."""
        return iter((self.hidden, self.mask, self.pooled))

    def unpadded(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``i`` without padding: ([1, n, H], pooled [1, D])."""
        n = int(self.mask[i].sum())
        return self.hidden[i : i + 1, :n], self.pooled[i : i + 1]


def truncate(ids: list[int], limit: int, what: str, index: int, keep_last: bool = False) -> tuple[list[int], int]:
    """Cut ``ids`` to ``limit``; ``keep_last`` keeps the closing special token (``</s>``) as HF truncation does."""
    if len(ids) <= limit:
        return ids, 0
    dropped = len(ids) - limit
    message = (
        f"{what} prompt {index + 1} is {len(ids)} tokens; training used at most {limit}, "
        f"so the last {dropped} tokens were dropped"
    )
    warnings.warn(message, TruncationWarning, stacklevel=3)
    log.warning(message)
    if keep_last:
        return ids[: limit - 1] + ids[-1:], dropped
    return ids[:limit], dropped


def pad_batch(rows: list[list[int]], pad_id: int, multiple_of: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into ``(ids, mask)`` long tensors (the padding side training used)."""
    longest = max(1, max(len(r) for r in rows))
    longest = -(-longest // multiple_of) * multiple_of
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


class TextEncoders:
    """Gemma + Jina with their tokenizers; ``encode`` applies the training split and limits."""

    def __init__(
        self,
        gemma: torch.nn.Module,
        gemma_tokenizer: Tokenizer,
        jina: torch.nn.Module,
        jina_tokenizer: Tokenizer,
        gemma_max_tokens: int = GEMMA_MAX_TOKENS,
        jina_max_tokens: int = JINA_MAX_TOKENS,
    ):
        self.gemma = gemma
        self.gemma_tokenizer = gemma_tokenizer
        self.jina = jina
        self.jina_tokenizer = jina_tokenizer
        self.gemma_max_tokens = gemma_max_tokens
        self.jina_max_tokens = jina_max_tokens

    def gemma_ids(self, texts: list[str], limit: bool = True) -> tuple[list[list[int]], list[int]]:
        rows, dropped = [], []
        for i, text in enumerate(texts):
            ids = self.gemma_tokenizer.encode(text)
            if limit:
                ids, n = truncate(ids, self.gemma_max_tokens, "Gemma", i)
            else:
                n = 0
            rows.append(ids)
            dropped.append(n)
        return rows, dropped

    def jina_ids(self, texts: list[str], limit: bool = True) -> list[list[int]]:
        rows = []
        for i, text in enumerate(texts):
            ids = self.jina_tokenizer.encode(text)
            if limit:
                ends_with_eos = self.jina_tokenizer.add_eos and self.jina_tokenizer.eos_id is not None
                ids, _ = truncate(ids, self.jina_max_tokens, "Jina", i, keep_last=ends_with_eos)
            rows.append(ids)
        return rows

    @torch.no_grad()
    def encode_ids(self, gemma_rows: list[list[int]], jina_rows: list[list[int]]) -> EncodedPrompts:
        device = next(self.gemma.parameters()).device
        ids, mask = pad_batch(gemma_rows, self.gemma_tokenizer.pad_id, multiple_of=8)
        hidden = self.gemma(ids.to(device), mask.to(device))
        jids, jmask = pad_batch(jina_rows, self.jina_tokenizer.pad_id)
        jdevice = next(self.jina.parameters()).device
        pooled = self.jina(jids.to(jdevice), jmask.to(jdevice))
        return EncodedPrompts(hidden, mask.to(hidden.device), pooled)

    def encode(
        self,
        prompts: list[str] | str,
        system_prompt: str = "auto",
        custom_system_prompt: str = "",
        limit_tokens: bool = True,
        escapes: str = "unescape",
    ) -> EncodedPrompts:
        """Encode prompts as in training: system prompt to Gemma only, bare prompt to Jina, 512-token Gemma cap.

        ``limit_tokens=False`` turns the caps off (ComfyUI core's behaviour), for comparisons. ``escapes``:
        "unescape" turns A1111-style ``\\(`` ``\\)`` into parentheses (captions never hold the backslashes),
        "literal" keeps the text as typed.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise ValueError("no prompts to encode")
        prompts = [apply_escapes(p, escapes) for p in prompts]
        gemma_rows, dropped = self.gemma_ids(
            [gemma_text(p, system_prompt, custom_system_prompt) for p in prompts], limit_tokens
        )
        out = self.encode_ids(gemma_rows, self.jina_ids(list(prompts), limit_tokens))
        out.dropped_tokens = dropped
        out.spans = self._spans(prompts, gemma_rows, system_prompt, custom_system_prompt, limit_tokens)
        return out

    def _spans(self, prompts, gemma_rows, system_prompt, custom_system_prompt, limit_tokens) -> list:
        from ..regions import token_spans

        limit = self.gemma_max_tokens if limit_tokens else None
        try:
            pairs = [
                token_spans(self.gemma_tokenizer, p, system_prompt_for(p, system_prompt, custom_system_prompt), limit)
                for p in prompts
            ]
        except NotImplementedError:  # this tokenizer reports no offsets
            return []
        return [spans if ids == row else None for (ids, spans), row in zip(pairs, gemma_rows)]


def load_text_encoders(gemma_path, jina_path, dtype=None, device="cpu") -> TextEncoders:
    """Load both encoders from ComfyUI single files or official HF folders (safetensors only)."""
    dtype = parse_dtype(dtype)
    gemma, gemma_tok = load_gemma(gemma_path, dtype=dtype, device=device)
    jina, jina_tok, info = load_jina(jina_path, dtype=dtype, device=device)
    log.info("Jina CLIP LoRA adapters: %s", info["lora"])
    return TextEncoders(gemma, gemma_tok, jina, jina_tok)
