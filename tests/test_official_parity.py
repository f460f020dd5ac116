"""Bitwise parity with the official NewBie code, when a checkout of it is available.

Set NEWBIE_OFFICIAL_PATH to a folder holding the official repository's ``models/`` package
(NewBieAI-Lab/NewBie-image-Exp0.1). flash-attn is stubbed: in fp32 the official code uses SDPA.
Nothing of that code is part of this project.
"""

from __future__ import annotations

import os
import sys
import types

import pytest
import torch
from dit_helpers import inputs, tiny_model

OFFICIAL = os.environ.get("NEWBIE_OFFICIAL_PATH")
pytestmark = pytest.mark.skipif(
    not OFFICIAL, reason="set NEWBIE_OFFICIAL_PATH to the official NewBie checkout to compare"
)


@pytest.fixture(scope="module")
def official_class():
    stub = types.ModuleType("flash_attn")
    stub.flash_attn_varlen_func = None
    padding = types.ModuleType("flash_attn.bert_padding")
    padding.index_first_axis = padding.pad_input = padding.unpad_input = None
    saved = {k: sys.modules.get(k) for k in ("flash_attn", "flash_attn.bert_padding")}
    sys.modules.update({"flash_attn": stub, "flash_attn.bert_padding": padding})
    sys.path.insert(0, OFFICIAL)
    try:
        from models.model import NextDiT_CLIP

        yield NextDiT_CLIP
    finally:
        sys.path.remove(OFFICIAL)
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


@pytest.mark.parametrize("h,w,cap_len", [(8, 6, 5), (10, 4, 7), (4, 12, 3)])
def test_forward_is_bitwise_equal_to_official_in_fp32(official_class, h, w, cap_len):
    ours = tiny_model(seed=h * w)
    c = ours.config
    official = official_class(
        patch_size=2,
        in_channels=16,
        dim=c.dim,
        n_layers=c.n_layers,
        n_refiner_layers=c.n_refiner_layers,
        n_heads=c.n_heads,
        n_kv_heads=c.n_kv_heads,
        multiple_of=32,
        qk_norm=True,
        cap_feat_dim=c.cap_feat_dim,
        axes_dims=list(c.axes_dims),
        axes_lens=list(c.axes_lens),
        clip_text_dim=c.clip_text_dim,
    ).eval()
    official.load_state_dict(ours.state_dict(), strict=True)
    x, t, cap, pooled = inputs(c, batch=3, h=h, w=w, cap_len=cap_len)
    mask = torch.ones(3, cap_len, dtype=torch.long)
    mask[1, cap_len - 2 :] = 0
    mask[2, 1:] = 0
    with torch.no_grad():
        assert torch.equal(official(x, t, cap, mask, clip_text_pooled=pooled), ours(x, t, cap, mask, pooled))
        full = torch.ones_like(mask)
        assert torch.equal(official(x, t, cap, full), ours(x, t, cap, None))
