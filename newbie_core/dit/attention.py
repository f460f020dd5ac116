"""The attention kernel the DiT calls, kept behind one function so hosts can swap it.

Contract of an attention function::

    attention(q, k, v, key_mask) -> [B, S, H * D]

with ``q`` [B, H, S, D], ``k``/``v`` [B, H_kv, S, D] (grouped-query: query head ``h``
reads key/value head ``h // (H // H_kv)``), ``key_mask`` a bool [B, S] (True = attend),
a float additive bias [B, 1, S, S] (regional attention, padding included) or None when every
token is valid, and softmax scale ``1 / sqrt(D)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ``enable_gqa`` arrived in torch 2.5; older hosts expand the kv heads instead.
_SDPA_HAS_GQA = torch.torch_version.TorchVersion(torch.__version__) >= (2, 5)


def expand_kv_heads(k: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Repeat each key/value head consecutively so head ``h`` of the result is kv head ``h // rep``."""
    rep = n_heads // k.shape[1]
    return k if rep == 1 else k.repeat_interleave(rep, dim=1)


def use_gqa_kernel(key_mask) -> bool:
    """Grouped kv heads go straight to SDPA only without a mask: masked GQA would fall back to the math kernel."""
    return _SDPA_HAS_GQA and key_mask is None


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Default kernel: ``torch.nn.functional.scaled_dot_product_attention``."""
    b, h, s, d = q.shape
    mask = None if key_mask is None else key_mask[:, None, None, :] if key_mask.ndim == 2 else key_mask
    if k.shape[1] != h:
        if use_gqa_kernel(key_mask):
            out = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            return out.transpose(1, 2).reshape(b, s, h * d)
        k = expand_kv_heads(k, h)
        v = expand_kv_heads(v, h)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, s, h * d)
