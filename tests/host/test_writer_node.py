"""NewBie Prompt Writer in real ComfyUI: on our loader's CLIP and on core's NewBie CLIP; its XML feeds the encoder."""

from __future__ import annotations

import pytest
import torch
from model_files import stock_vae_width, write_tiny_models
from test_nodes import _clip, _core_newbie_te

from newbie_core.xml_prompt import parse


@pytest.fixture()
def tiny(models_dir):
    return write_tiny_models(models_dir, vae_width=stock_vae_width())


def _write(node_classes, clip, seed=3, partial=""):
    node = node_classes["NewBiePromptWriter"]
    return node.execute(clip, "a girl with red hair in the rain", seed, 96, 0.8, 0.95, partial).result[0]


def test_writer_node_output_parses_and_feeds_the_encode_node(node_classes, tiny):
    import comfy.model_management as mm

    clip = _clip(node_classes)
    mm.unload_all_models()
    xml = _write(node_classes, clip)
    # the writer asked ComfyUI to load the CLIP (so ComfyUI also decides when to offload it)
    assert any(getattr(m.model, "model", None) is clip.cond_stage_model for m in mm.current_loaded_models)
    prompt = parse(xml)
    assert prompt.is_xml and prompt.warnings == [] and prompt.general_tags
    assert _write(node_classes, clip) == xml  # same seed, same prompt
    ((cond, extras),) = node_classes["NewBieTextEncode"].execute(clip, xml, "auto", "").result[0]
    assert cond.shape[0] == 1 and cond.shape[2] == 64 and extras["pooled_output"].shape == (1, 128)
    # one Gemma: the top layer lives inside the CLIP's managed module, which ComfyUI loaded and measured
    gemma = clip.cond_stage_model.gemma
    assert hasattr(gemma, "generation_head")
    assert clip.patcher.model_size() >= sum(p.numel() * p.element_size() for p in clip.cond_stage_model.parameters())


def test_writer_node_continues_a_partial_prompt(node_classes, tiny):
    clip = _clip(node_classes)
    partial = "<character_1>\n<n>hatsune_miku</n>\n"
    xml = _write(node_classes, clip, partial=partial)
    assert xml.startswith(partial) and parse(xml).characters[0].fields["n"] == "hatsune_miku"
    with pytest.raises(ValueError, match=r"NewBie Prompt Writer: partial prompt, line 1, column 2"):
        _write(node_classes, clip, partial="<x>")
    verdict = node_classes["NewBiePromptWriter"].validate_inputs(partial_prompt="<character_1>\n<x>")
    assert verdict.startswith("NewBie Prompt Writer: partial prompt, line 2, column 2: the writer cannot continue")
    assert node_classes["NewBiePromptWriter"].validate_inputs(partial_prompt="") is True


def test_writer_node_on_core_newbie_clip_writes_what_ours_writes(node_classes, tiny, monkeypatch):
    import comfy.model_patcher
    import comfy.sd
    from text_helpers import gemma_spm, jina_spm

    try:
        te, tok = _core_newbie_te(tiny, (gemma_spm(), jina_spm()), monkeypatch)
        te.gemma.transformer.load_state_dict(
            {"model." + k: v for k, v in tiny["gemma"].state_dict().items()}, strict=False
        )
    except Exception as exc:  # core's internal constructors changed: this comparison cannot be built
        pytest.skip(f"core's NewBie encoder cannot be built with tiny configs here: {exc}")
    core = comfy.sd.CLIP(no_init=True)
    core.cond_stage_model, core.tokenizer = te, tok
    core.patcher = comfy.model_patcher.ModelPatcher(
        te, load_device=torch.device("cpu"), offload_device=torch.device("cpu")
    )
    core.layer_idx, core.tokenizer_options, core.use_clip_schedule, core.apply_hooks_to_conds = None, {}, False, None
    core_xml = _write(node_classes, core)
    assert core_xml == _write(node_classes, _clip(node_classes))
    # no copy of core's weights was made: the writer's parameters are core's own
    import sys

    writer_mod = sys.modules[node_classes["NewBiePromptWriter"].__module__]
    lm, _ = writer_mod.writer_from_clip(core)
    core_ptrs = {p.data_ptr() for p in te.gemma.parameters()}
    assert {p.data_ptr() for p in lm.lm.parameters()} <= core_ptrs


def test_writer_node_rejects_other_clips(node_classes):
    with pytest.raises(ValueError, match="NewBie Prompt Writer needs a NewBie CLIP"):
        _write(node_classes, object())
