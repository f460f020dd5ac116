"""Our Gemma + Jina encoders as a stock ComfyUI ``CLIP`` object, and token helpers for both CLIP kinds.

The CLIP's tokenizer emits ``{"gemma": ..., "jina": ...}`` exactly like core's NewBie CLIP, and
its model returns ``(gemma states, jina pooled, {"attention_mask": ...})``, so stock
CLIPTextEncode and conditioning nodes treat it like core's, and our encode node can apply the
training split to either.
"""

from __future__ import annotations

import logging

import comfy.model_management as mm
import comfy.sd
import comfy.supported_models_base
import torch

from ..newbie_core.dtypes import parse_dtype
from ..newbie_core.text import GEMMA_MAX_TOKENS, apply_escapes
from ..newbie_core.text.gemma import load_gemma
from ..newbie_core.text.jina import load_jina

log = logging.getLogger("newbie")


def _pairs(ids: list[int], word_ids: bool):
    return [[(i, 1.0, 0) if word_ids else (i, 1.0) for i in ids]]


class NewBieClipTokenizer:
    """Raw text -> ids for both encoders: no prompt-weight syntax; ``\\(`` ``\\)`` un-escaped as core does."""

    def __init__(self, embedding_directory=None, tokenizer_data={}):  # noqa: B006 - ComfyUI's signature
        self.gemma = tokenizer_data["newbie_gemma"]
        self.jina = tokenizer_data["newbie_jina"]

    def tokenize_with_weights(self, text: str, return_word_ids=False, **kwargs):
        text = apply_escapes(text)
        return {
            "gemma": _pairs(self.gemma.encode(text), return_word_ids),
            "jina": _pairs(self.jina.encode(text), return_word_ids),
        }

    def newbie_tokens(self, gemma_text: str, jina_text: str) -> tuple[list[int], list[int]]:
        return self.gemma.encode(gemma_text), self.jina.encode(jina_text)

    def untokenize(self, token_weight_pair):
        raise NotImplementedError("the NewBie tokenizer does not untokenize")

    def state_dict(self):
        return {}


class NewBieClipModel(torch.nn.Module):
    """Holds the loaded encoders; ComfyUI's patcher moves it between devices."""

    def __init__(self, gemma, jina, dtype):
        super().__init__()
        self.gemma = gemma
        self.jina = jina
        self.dtypes = {dtype}
        self.execution_device = None

    def set_clip_options(self, options):
        self.execution_device = options.get("execution_device", self.execution_device)

    def reset_clip_options(self):
        self.execution_device = None

    @staticmethod
    def _ids(batches) -> list[int]:
        return [t[0] for batch in batches for t in batch if isinstance(t[0], int)]

    def encode_token_weights(self, token_weight_pairs):
        device = self.execution_device or next(self.gemma.parameters()).device
        gemma_ids = torch.tensor([self._ids(token_weight_pairs["gemma"])], device=device)
        jina_ids = torch.tensor([self._ids(token_weight_pairs["jina"])], device=device)
        with torch.no_grad():
            hidden = self.gemma(gemma_ids, torch.ones_like(gemma_ids))
            pooled = self.jina(jina_ids, torch.ones_like(jina_ids))
        out_device = mm.intermediate_device()
        mask = torch.ones(gemma_ids.shape, dtype=torch.long, device=out_device)
        return hidden.float().to(out_device), pooled.float().to(out_device), {"attention_mask": mask}

    def load_sd(self, sd):  # weights arrive through newbie_core's validated loaders
        return [], list(sd.keys())


def load_newbie_clip(gemma_path: str, jina_path: str, dtype: str = "default", device: str = "default"):
    """Both encoders (validated, lazily read) wrapped as a stock CLIP with ComfyUI's device management."""
    load_device = torch.device("cpu") if device == "cpu" else mm.text_encoder_device()
    offload_device = torch.device("cpu") if device == "cpu" else mm.text_encoder_offload_device()
    if parse_dtype(dtype) is not None:
        torch_dtype = parse_dtype(dtype)
    elif load_device.type == "cpu" or not mm.should_use_bf16(load_device):
        torch_dtype = torch.float32
    else:
        torch_dtype = torch.bfloat16
    gemma, gemma_tok = load_gemma(gemma_path, dtype=torch_dtype, device=offload_device)
    jina, jina_tok, info = load_jina(jina_path, dtype=torch_dtype, device=offload_device)
    log.info("NewBie text encoders loaded (%s); Jina LoRA: %s", torch_dtype, info["lora"])

    def model_factory(device=None, dtype=None, model_options=None):
        return NewBieClipModel(gemma, jina, torch_dtype)

    target = comfy.supported_models_base.ClipTarget(NewBieClipTokenizer, model_factory)
    params = sum(p.numel() for p in gemma.parameters()) + sum(p.numel() for p in jina.parameters())
    return comfy.sd.CLIP(
        target=target,
        tokenizer_data={"newbie_gemma": gemma_tok, "newbie_jina": jina_tok},
        parameters=params,
        model_options={
            "dtype": torch_dtype,
            "load_device": load_device,
            "offload_device": offload_device,
            "initial_device": offload_device,
        },
    )


def is_newbie_clip(clip) -> bool:
    tok = getattr(clip, "tokenizer", None)
    return tok is not None and hasattr(tok, "gemma") and hasattr(tok, "jina")


def _core_raw_ids(sub_tokenizer, text: str) -> list[int] | None:
    """Ids from core's sentencepiece tokenizer without its weight/escape parsing (None if not reachable)."""
    inner = getattr(sub_tokenizer, "tokenizer", None)
    if inner is None or not callable(inner):
        return None
    return list(inner(text)["input_ids"])


def newbie_tokens(clip, gemma_text: str, jina_text: str, max_gemma_tokens: int = GEMMA_MAX_TOKENS):
    """Token dict for ``clip.encode_from_tokens*``: Gemma sees ``gemma_text``, Jina ``jina_text``.

    Returns ``(tokens, dropped)`` where ``dropped`` counts Gemma tokens cut at the training limit.
    """
    tok = clip.tokenizer
    if hasattr(tok, "newbie_tokens"):
        gemma_ids, jina_ids = tok.newbie_tokens(gemma_text, jina_text)
    else:
        gemma_ids = _core_raw_ids(tok.gemma, gemma_text)
        jina_ids = _core_raw_ids(tok.jina, jina_text)
        if gemma_ids is None or jina_ids is None:  # unknown core internals: go through its public path
            g = clip.tokenize(gemma_text, disable_weights=True)["gemma"]
            j = clip.tokenize(jina_text, disable_weights=True)["jina"]
            gemma_ids = NewBieClipModel._ids(g)
            jina_ids = NewBieClipModel._ids(j)
    dropped = max(0, len(gemma_ids) - max_gemma_tokens)
    if dropped:
        gemma_ids = gemma_ids[:max_gemma_tokens]
    return {"gemma": _pairs(gemma_ids, False), "jina": _pairs(jina_ids, False)}, dropped
