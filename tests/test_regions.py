"""Regional attention: token spans, the key-mask pattern, what the attention actually does, and the no-op cases."""

from __future__ import annotations

import math

import pytest
import torch
from dit_helpers import inputs, tiny_model
from text_helpers import gemma_spm

from newbie_core.dit.attention import sdpa_attention
from newbie_core.layout import Box, RegionError
from newbie_core.regions import (
    RegionalAttention,
    RegionSettings,
    SampleRegions,
    area_weights,
    check_regions,
    token_spans,
)
from newbie_core.text.conditioning import SYSTEM_PROMPTS
from newbie_core.text.tokenizers import ByteTokenizer, SentencePieceTokenizer

PROMPT = """<character_1>
  <n>rem_\\(re:zero\\)</n>
  <gender>1girl</gender>
  <appearance>blue_hair, black&amp;white</appearance>
</character_1>

<character_2>
  <n>ram_ラム</n>
  <gender>1girl</gender>
</character_2>

<general_tags>
  <count>2girls</count>
</general_tags>"""


def byte_tok():
    return ByteTokenizer(bos_id=2, eos_id=1, pad_id=0, offset=4, add_bos=True, add_eos=False)


def block(text, tag):
    return text[text.index(f"<{tag}>") : text.index(f"</{tag}>") + len(f"</{tag}>")]


def squash(text):
    """Sentencepiece folds whitespace runs (newlines, indents) into single spaces."""
    return " ".join(text.split())


# ----------------------------------------------------------------------------- spans


@pytest.mark.parametrize("prefix", ["", SYSTEM_PROMPTS["xml"]])
def test_byte_spans_are_exact_byte_ranges(prefix):
    text = prefix + PROMPT
    ids, spans = token_spans(byte_tok(), PROMPT, prefix)
    assert ids == byte_tok().encode(text)
    for n in (1, 2):
        start = len(text[: text.index(f"<character_{n}>")].encode()) + 1  # +1: BOS
        end = len(text[: text.index(f"</character_{n}>") + len(f"</character_{n}>")].encode()) + 1
        assert spans.characters[n] == (start, end)
    g0 = len(text[: text.index("<general_tags>")].encode()) + 1
    assert spans.general_tags == (g0, g0 + len(block(text, "general_tags").encode()))
    assert spans.system == (0, 1 + len(prefix.rstrip().encode()))


@pytest.fixture(scope="module")
def spm_tok():
    return SentencePieceTokenizer(gemma_spm(), add_bos=True, add_eos=False)


@pytest.mark.parametrize("prefix", ["", SYSTEM_PROMPTS["xml"], "custom system prompt<"])
def test_sentencepiece_spans_decode_to_each_block(spm_tok, prefix):
    ids, spans = token_spans(spm_tok, PROMPT, prefix)
    assert ids == spm_tok.encode(prefix + PROMPT)
    sp = spm_tok.sp
    for n in (1, 2):
        a, b = spans.characters[n]
        assert squash(sp.decode(ids[a:b])) == squash(block(PROMPT, f"character_{n}"))
    a, b = spans.general_tags
    assert squash(sp.decode(ids[a:b])) == squash(block(PROMPT, "general_tags"))
    assert spans.characters[1][0] >= spans.system[1]
    # every token between the blocks is whitespace only
    c1_end, c2_start = spans.characters[1][1], spans.characters[2][0]
    assert sp.decode(ids[c1_end:c2_start]).strip() == ""


def test_truncation_clips_spans_and_reports_cut_characters(spm_tok):
    full, spans_full = token_spans(spm_tok, PROMPT, SYSTEM_PROMPTS["xml"])
    c2 = spans_full.characters[2]
    limit = (c2[0] + c2[1]) // 2
    ids, spans = token_spans(spm_tok, PROMPT, SYSTEM_PROMPTS["xml"], limit=limit)
    assert ids == full[:limit] and spans.length == limit
    assert spans.characters[2] == (c2[0], limit)
    assert spans.truncated == (2,)
    assert spans.general_tags is None
    ids, spans = token_spans(spm_tok, PROMPT, SYSTEM_PROMPTS["xml"], limit=c2[0])
    assert 2 not in spans.characters and spans.truncated == (2,)
    with pytest.raises(RegionError, match="character_2 has a region but its block was cut off by the"):
        check_regions({2: Box(0, 0, 10, 10)}, spans)
    with pytest.raises(RegionError, match=r"no <character_3> \(it has character_1\)"):
        check_regions({3: Box(0, 0, 10, 10)}, spans)


def test_plain_prompt_has_no_character_spans(spm_tok):
    ids, spans = token_spans(spm_tok, "1girl, solo", SYSTEM_PROMPTS["tags"])
    assert spans.characters == {} and spans.length == len(ids)


# ----------------------------------------------------------------------------- mask pattern


def naive_allowed(cap_len, n_caps_max, grid, spans, boxes, outside, seq):
    """Spec, cell by cell: which keys each query may attend to."""
    gh, gw = grid
    n_img = gh * gw
    owner = {}
    for ch, (a, b) in spans.items():
        if ch in boxes:
            for k in range(a, min(b, cap_len)):
                owner[k] = ch
    allowed = torch.zeros(seq, seq, dtype=torch.bool)
    for q in range(seq):
        for k in range(seq):
            if k >= cap_len + n_img:
                continue  # padding key
            j = q - cap_len
            if not (0 <= j < n_img) or k >= cap_len or k not in owner:
                allowed[q, k] = True
                continue
            r, c = divmod(j, gw)
            cy, cx = (r + 0.5) * 1000 / gh, (c + 0.5) * 1000 / gw

            def inside(box):
                return box.x0 <= cx < box.x1 and box.y0 <= cy < box.y1

            participants = [ch for ch in boxes if ch in spans]
            if inside(boxes[owner[k]]):
                allowed[q, k] = True
            elif not any(inside(boxes[ch]) for ch in participants):
                allowed[q, k] = outside == "all"
    return allowed


@pytest.mark.parametrize("outside", ["shared", "all"])
def test_mask_pattern_matches_naive_construction(outside):
    grid = (4, 6)
    samples = [
        SampleRegions({1: (2, 5), 2: (5, 9)}, {1: Box(0, 0, 500, 1000), 2: Box(400, 250, 1000, 750)}),
        None,
        SampleRegions({1: (1, 3), 2: (3, 6), 3: (6, 7)}, {2: Box(100, 100, 300, 900)}),  # 1 and 3: no box -> shared
    ]
    cap_lens = torch.tensor([11, 8, 7])
    seq = 11 + 24
    bias = RegionalAttention(samples, RegionSettings(outside=outside)).joint_bias(
        cap_lens, *grid, seq, torch.float32, "cpu"
    )
    assert bias.shape == (3, 1, seq, seq)
    low = torch.finfo(torch.float32).min
    assert set(bias.unique().tolist()) <= {0.0, low}
    for i, s in enumerate(samples):
        spans, boxes = (s.spans, s.areas) if s else ({}, {})
        ref = naive_allowed(int(cap_lens[i]), 11, grid, spans, boxes, outside, seq)
        assert torch.equal(bias[i, 0] == 0, ref), f"sample {i}"


def test_soft_edge_weights_fall_off_linearly():
    w = area_weights(Box(0, 0, 500, 1000), 1, 10, soft_edge=200).tolist()
    # token centres at 50, 150, ..., 950: inside up to 450; then 550 is 50 outside, 650 is 150 outside
    assert w[:5] == [1.0] * 5
    assert w[5] == pytest.approx(0.75) and w[6] == pytest.approx(0.25) and w[7:] == [0.0] * 3
    r = RegionalAttention([SampleRegions({1: (1, 2)}, {1: Box(0, 0, 500, 1000)})], RegionSettings(soft_edge=200))
    bias = r.joint_bias(torch.tensor([3]), 1, 10, 13, torch.float32, "cpu")
    assert bias[0, 0, 3 + 5, 1].item() == pytest.approx(math.log(0.75))
    assert bias[0, 0, 3 + 9, 1].item() == torch.finfo(torch.float32).min


def test_mask_inputs_are_resized_to_the_token_grid():
    mask = torch.zeros(64, 64)
    mask[:, :32] = 1.0
    w = area_weights(mask, 4, 4).reshape(4, 4)
    assert torch.equal(w, torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 4))


def test_full_frame_regions_build_no_mask():
    r = RegionalAttention([SampleRegions({1: (1, 3), 2: (3, 5)}, {1: Box(0, 0, 1000, 1000), 2: Box(0, 0, 1000, 1000)})])
    assert r.joint_bias(torch.tensor([6]), 4, 4, 22, torch.float32, "cpu") is None


# ----------------------------------------------------------------------------- the model


@pytest.fixture(scope="module")
def model():
    return tiny_model(n_layers=3)


def _two_char_regions(batch=2):
    left = SampleRegions({1: (1, 4), 2: (4, 7)}, {1: Box(0, 0, 500, 1000), 2: Box(500, 0, 1000, 1000)})
    top = SampleRegions({1: (1, 4), 2: (4, 7)}, {1: Box(0, 0, 1000, 500), 2: Box(0, 500, 1000, 1000)})
    return [left, top][:batch]


def test_attention_probability_outside_a_region_is_zero(model):
    """Forward pre-hooks on every main layer recompute the softmax the layer runs, from its own q and k."""
    x, t, cap, pooled = inputs(model.config, batch=2, h=8, w=8, cap_len=9)
    regions = RegionalAttention(_two_char_regions(), RegionSettings(layers=(0, 2)))
    seen = {}

    def hook(index):
        def pre(module, args):
            h, key_mask, freqs, _ = args
            b, s, _ = h.shape
            qw, kw = module.n_heads * module.head_dim, module.n_kv_heads * module.head_dim
            q, k, _ = module.qkv(h).split([qw, kw, kw], dim=-1)
            q = module.q_norm(q.view(b, s, module.n_heads, -1)).transpose(1, 2)
            k = module.k_norm(k.view(b, s, module.n_kv_heads, -1)).transpose(1, 2)
            from newbie_core.dit.rope import apply_rope

            q, k = apply_rope(q, freqs), apply_rope(k, freqs).repeat_interleave(module.n_heads // module.n_kv_heads, 1)
            scores = q @ k.transpose(-1, -2) / math.sqrt(module.head_dim)
            if key_mask is not None:
                scores = scores + (key_mask if key_mask.ndim == 4 else 0)
            seen[index] = (scores.softmax(-1), key_mask)

        return pre

    handles = [layer.attention.register_forward_pre_hook(hook(i)) for i, layer in enumerate(model.layers)]
    try:
        model(x, t, cap, None, pooled, regions=regions)
    finally:
        for hd in handles:
            hd.remove()
    n_cap, gw = 9, 4
    cols = torch.arange(16) % gw
    rows = torch.arange(16) // gw
    for layer in (0, 2):
        p = seen[layer][0]
        img = p[:, :, n_cap:, :]  # [B, H, n_img, S]
        left = cols < 2
        # sample 0: left half = character 1 (tokens 1..3), right half = character 2 (4..6)
        assert (img[0][:, ~left][..., 1:4] == 0).all() and (img[0][:, left][..., 4:7] == 0).all()
        assert (img[0][:, left][..., 1:4] > 0).all() and (img[0][:, ~left][..., 4:7] > 0).all()
        top = rows < 2
        assert (img[1][:, ~top][..., 1:4] == 0).all() and (img[1][:, top][..., 4:7] == 0).all()
        assert (p[:, :, :n_cap] > 0).all()  # caption queries attend as before
    assert seen[1][1] is None  # layer 1 not in settings.layers: unmasked


def test_full_frame_regions_equal_no_regions_bit_for_bit(model):
    x, t, cap, pooled = inputs(model.config, batch=2, h=8, w=8, cap_len=9)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    full = SampleRegions({1: (1, 4), 2: (4, 6)}, {1: Box(0, 0, 1000, 1000), 2: Box(0, 0, 1000, 1000)})
    ref = model(x, t, cap, mask, pooled)
    assert torch.equal(model(x, t, cap, mask, pooled, regions=RegionalAttention([full, full])), ref)


def test_per_sample_regions_in_a_padded_batch_equal_each_sample_alone(model):
    x, t, cap, pooled = inputs(model.config, batch=2, h=8, w=8, cap_len=9)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 7:] = 0
    samples = _two_char_regions()
    batched = model(x, t, cap, mask, pooled, regions=RegionalAttention(samples))
    for i, n in ((0, 9), (1, 7)):
        alone = model(x[i : i + 1], t[i : i + 1], cap[i : i + 1, :n], None, pooled[i : i + 1],
                      regions=RegionalAttention([samples[i]]))  # fmt: skip
        assert torch.allclose(batched[i : i + 1], alone, atol=1e-5)
    unmasked = model(x, t, cap, mask, pooled)
    assert (batched - unmasked).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # regions did change both samples


def test_unmasked_sample_in_a_regional_batch_is_untouched(model):
    """CFG's uncond rides in the same batch with None: it must come out as without regions."""
    x, t, cap, pooled = inputs(model.config, batch=2, h=8, w=8, cap_len=9)
    regions = RegionalAttention([_two_char_regions(1)[0], None])
    out = model(x, t, cap, None, pooled, regions=regions)
    ref = model(x, t, cap, None, pooled)
    assert torch.allclose(out[1], ref[1], atol=1e-6)
    assert not torch.allclose(out[0], ref[0], atol=1e-3)


def test_bias_path_of_the_attention_kernel_matches_explicit_softmax():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 10, 8, generator=gen) for _ in range(3))
    bias = torch.zeros(2, 1, 10, 10)
    bias[0, 0, 5:, 2:4] = torch.finfo(torch.float32).min
    ref = ((q @ k.transpose(-1, -2)) / math.sqrt(8) + bias).softmax(-1) @ v
    out = sdpa_attention(q, k, v, bias)
    assert torch.allclose(out, ref.transpose(1, 2).reshape(2, 10, 32), atol=1e-5)


def test_settings_are_validated():
    with pytest.raises(RegionError, match="outside policy 'none' is unknown; choose one of: shared, all"):
        RegionalAttention([], RegionSettings(outside="none"))
    with pytest.raises(RegionError, match="until 1.5 is outside 0-1"):
        RegionalAttention([], RegionSettings(until=1.5))


def test_spans_inside_an_image_root_with_caption():
    prompt = "<image>\n<caption>Two friends.</caption>\n<character_1><n>a</n></character_1>\n</image>"
    _, spans = token_spans(byte_tok(), prompt, "sys ")
    text = "sys " + prompt
    start = text.index("<caption>") + 1
    assert spans.caption == (start, start + len("<caption>Two friends.</caption>"))
    c = text.index("<character_1>") + 1
    assert spans.characters == {1: (c, c + len("<character_1><n>a</n></character_1>"))}
    assert spans.system == (0, 4)  # BOS + "sys" (the trailing space belongs to no block)


def test_encoded_prompts_carry_spans():
    from newbie_core import tiny

    enc = tiny.tiny_text_encoders()
    out = enc.encode([PROMPT, "1girl"], system_prompt="auto")
    assert len(out.spans) == 2
    from newbie_core.text.conditioning import apply_escapes

    # the encoders see \( as ( (default escapes): the spans are those of that text
    ids, spans = token_spans(enc.gemma_tokenizer, apply_escapes(PROMPT), SYSTEM_PROMPTS["xml"], 512)
    assert out.spans[0] == spans and out.mask[0].sum() == spans.length == len(ids)
    assert spans != token_spans(enc.gemma_tokenizer, PROMPT, SYSTEM_PROMPTS["xml"], 512)[1]
    assert out.spans[1].characters == {} and out.spans[1].length == int(out.mask[1].sum())
