"""Gemma files as users have them: config.json is the truth, shards load as a set, quantised files dequantise.

The reference is transformers' own Gemma3TextModel built from the same folder's config.json and tensors.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from newbie_core.errors import CheckpointError

VOCAB = 300


def unusual_text_config() -> dict:
    """A tiny Gemma3 text config where nothing is the default: an explicit layer pattern that the 5:1 rule would
    not give, a short sliding window, RoPE thetas and scaling unlike 4B's, query_pre_attn_scalar != head_dim."""
    return {
        "model_type": "gemma3_text",
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 5,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "query_pre_attn_scalar": 40,
        "sliding_window": 3,
        "layer_types": [
            "full_attention",
            "sliding_attention",
            "full_attention",
            "sliding_attention",
            "sliding_attention",
        ],
        "rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": 3.0, "rope_theta": 50_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 777.0},
        },
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 512,
    }


def reference_model(text_cfg: dict, seed: int = 3):
    from transformers import Gemma3TextConfig, Gemma3TextModel

    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(**text_cfg)
    cfg._attn_implementation = "eager"
    model = Gemma3TextModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.1 if "norm" in name else 0.2))
    return model


def write_hf_folder(folder, model, text_cfg: dict, shards: int = 1, index: bool = True):
    """google/gemma-3-4b-it layout: multimodal config, keys under ``language_model.model.``, vision tower beside."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = {"language_model.model." + k: v.contiguous() for k, v in model.state_dict().items()}
    sd["vision_tower.vision_model.embeddings.patch_embedding.weight"] = torch.zeros(2, 3, 1, 1)
    sd["multi_modal_projector.mm_input_projection_weight"] = torch.zeros(2, 2)
    (folder / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": text_cfg}))
    keys = sorted(sd)
    if shards == 1:
        save_file(sd, str(folder / "model.safetensors"))
        return [folder / "model.safetensors"]

    # split by layer number so each shard holds a contiguous block of layers, as HF's sharding does
    def shard_of(key):
        if ".layers." in key:
            return min(
                shards - 1, int(key.split(".layers.")[1].split(".")[0]) * shards // text_cfg["num_hidden_layers"]
            )
        return 0 if "embed_tokens" in key else shards - 1

    names = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    weight_map = {}
    for i, name in enumerate(names):
        part = {k: sd[k] for k in keys if shard_of(k) == i}
        save_file(part, str(folder / name))
        weight_map.update({k: name for k in part})
    if index:
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return [folder / n for n in names]


def reference_from_folder(folder):
    """transformers' Gemma3TextModel from the folder's own config.json and tensors (all layers, final norm)."""
    from safetensors.torch import load_file
    from transformers import Gemma3TextConfig, Gemma3TextModel

    cfg = Gemma3TextConfig(**json.loads((folder / "config.json").read_text())["text_config"])
    cfg._attn_implementation = "eager"
    sd = {}
    for f in sorted(folder.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    model = Gemma3TextModel(cfg).eval()
    prefix = "language_model.model."
    model.load_state_dict({k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)})
    return model


IDS = torch.tensor([[2, 17, 5, 88, 41, 9, 250, 33, 7, 120, 64, 3]])


def assert_matches_reference(encoder, folder):
    ref = reference_from_folder(folder)
    with torch.no_grad():
        want = ref(IDS, output_hidden_states=True).hidden_states[-2]
        got = encoder(IDS, torch.ones_like(IDS))
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=2e-5), (got - want).abs().max()


@pytest.fixture(scope="module")
def unusual(tmp_path_factory):
    cfg = unusual_text_config()
    return cfg, reference_model(cfg)


@pytest.mark.parametrize("rope_keys", ["rope_parameters", "legacy"])
def test_config_json_is_the_truth_layer_types_window_rope_scalar(unusual, tmp_path, rope_keys):
    cfg, model = unusual
    if rope_keys == "legacy":  # google/gemma-3-4b-it's own config.json spells RoPE this way
        cfg = {k: v for k, v in cfg.items() if k != "rope_parameters"}
        cfg.update(rope_theta=50_000.0, rope_local_base_freq=777.0, rope_scaling={"rope_type": "linear", "factor": 3.0})
    folder = tmp_path / "gemma"
    write_hf_folder(folder, model, cfg)
    from newbie_core.text import gemma as gemma_mod

    encoder = load_gemma_weights_only(gemma_mod, folder)
    assert encoder.config.layer_types == cfg["layer_types"][:4]
    assert encoder.config.sliding_window == 3 and encoder.config.query_pre_attn_scalar == 40
    assert encoder.config.num_hidden_layers == 4
    assert_matches_reference(encoder, folder)


def load_gemma_weights_only(gemma_mod, path, **kwargs):
    """load_gemma without a tokenizer (these tests check weights and config only)."""
    from unittest import mock

    fake = object()
    with mock.patch.object(gemma_mod, "tokenizer_from_folder", return_value=fake):
        encoder, tok = gemma_mod.load_gemma(path, **kwargs)
    assert tok is fake
    return encoder


def test_one_shard_loads_the_whole_set_through_the_index(unusual, tmp_path, caplog):
    from newbie_core.text import gemma as gemma_mod

    cfg, model = unusual
    folder = tmp_path / "sharded"
    shards = write_hf_folder(folder, model, cfg, shards=3)
    with caplog.at_level("INFO", logger="newbie"):
        encoder = load_gemma_weights_only(gemma_mod, shards[1])
    assert any("is one shard of model.safetensors.index.json" in r.message for r in caplog.records)
    assert_matches_reference(encoder, folder)
    assert_matches_reference(load_gemma_weights_only(gemma_mod, folder / "model.safetensors.index.json"), folder)


def test_one_shard_without_index_is_refused_naming_missing_layers(unusual, tmp_path):
    from newbie_core.text import gemma as gemma_mod

    cfg, model = unusual
    folder = tmp_path / "sharded"
    shards = write_hf_folder(folder, model, cfg, shards=3, index=False)
    with pytest.raises(
        CheckpointError,
        match=r"model-00001-of-00003.safetensors: Gemma decoder layers 2-3 are missing \(config.json states 5 "
        r"layers, the file holds 0-1\); it is shard 1 of 3: put all shards and model.safetensors.index.json",
    ):
        load_gemma_weights_only(gemma_mod, shards[0])


def test_shard_without_index_or_config_is_refused(unusual, tmp_path):
    from newbie_core.text import gemma as gemma_mod

    cfg, model = unusual
    folder = tmp_path / "sharded"
    shards = write_hf_folder(folder, model, cfg, shards=3, index=False)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"this is shard 2 of 3 of a sharded Gemma with no model.safetensors"):
        load_gemma_weights_only(gemma_mod, shards[1])


def test_comfy_single_file_of_4b_width_missing_layers_is_refused(tmp_path):
    """No config: a 2560-wide file is the 4B model and must hold its 34 layers."""
    from newbie_core.text import gemma as gemma_mod

    hidden = 2560
    sd = {"model.embed_tokens.weight": torch.zeros(4, hidden)}
    for i in (0, 1, 2):
        sd[f"model.layers.{i}.self_attn.q_norm.weight"] = torch.zeros(256)
    path = tmp_path / "gemma_3_4b_it_part.safetensors"
    save_file(sd, str(path))
    with pytest.raises(
        CheckpointError,
        match=r"Gemma decoder layers 3-32 are missing \(Gemma3-4B states 34 layers, the file holds 0-2\)$",
    ):
        load_gemma_weights_only(gemma_mod, path)


def test_config_that_contradicts_the_weights_is_refused(unusual, tmp_path):
    from newbie_core.text import gemma as gemma_mod

    cfg, model = unusual
    folder = tmp_path / "g"
    write_hf_folder(folder, model, dict(cfg, num_key_value_heads=4))
    with pytest.raises(CheckpointError, match="config.json states num_key_value_heads = 4 but the weights have 2"):
        load_gemma_weights_only(gemma_mod, folder)


# ------------------------------------------------------------------------------ quantised files

F8 = torch.float8_e4m3fn


def quantise(w: torch.Tensor):
    scale = w.abs().max() / 448.0
    return (w / scale).to(F8), scale.reshape(()).float()


def comfy_quantised_file(model, path, style: str, fmt: str = "float8_e4m3fn"):
    """ComfyUI's two scaled-fp8 layouts: old (``scaled_fp8`` marker + ``.scale_weight``) and new
    (``.comfy_quant`` JSON + ``.weight_scale``). Returns the dequantised state dict the reference should use."""
    sd, deq = {}, {}
    for k, v in model.state_dict().items():
        key = "model." + k
        if k.endswith("_proj.weight"):
            q, scale = quantise(v)
            sd[key] = q
            layer = key[: -len(".weight")]
            if style == "old":
                sd[layer + ".scale_weight"] = scale
                sd[layer + ".scale_input"] = torch.tensor(1.0)
            else:
                sd[layer + ".weight_scale"] = scale
                sd[layer + ".comfy_quant"] = torch.tensor(list(json.dumps({"format": fmt}).encode()), dtype=torch.uint8)
            deq[k] = q.float() * scale
        else:
            sd[key] = v
            deq[k] = v
    if style == "old":
        sd["model.scaled_fp8"] = torch.zeros(2, dtype=F8)
    save_file(sd, str(path))
    return deq


@pytest.mark.parametrize("style", ["old", "new"])
def test_scaled_fp8_gemma_is_dequantised_not_cast(unusual, tmp_path, style):
    from transformers import Gemma3TextConfig, Gemma3TextModel

    from newbie_core.text import gemma as gemma_mod

    cfg, model = unusual
    folder = tmp_path / style
    folder.mkdir()
    deq = comfy_quantised_file(model, folder / "gemma_fp8_scaled.safetensors", style)
    (folder / "config.json").write_text(json.dumps(cfg))
    default = load_gemma_weights_only(gemma_mod, folder / "gemma_fp8_scaled.safetensors")
    assert default.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16  # fp8 storage computes in bf16
    encoder = load_gemma_weights_only(gemma_mod, folder / "gemma_fp8_scaled.safetensors", dtype=torch.float32)
    ref_cfg = Gemma3TextConfig(**cfg)
    ref_cfg._attn_implementation = "eager"
    ref = Gemma3TextModel(ref_cfg).eval()
    ref.load_state_dict(deq)
    with torch.no_grad():
        want = ref(IDS, output_hidden_states=True).hidden_states[-2].float()
        got = encoder(IDS, torch.ones_like(IDS)).float()
    assert torch.allclose(got, want, atol=2e-5), (got - want).abs().max()


def test_block_quantised_gemma_is_refused_by_name(unusual, tmp_path):
    from newbie_core.text import gemma as gemma_mod

    cfg, model = unusual
    path = tmp_path / "gemma_nvfp4.safetensors"
    comfy_quantised_file(model, path, "new", fmt="nvfp4")
    with pytest.raises(
        CheckpointError,
        match=r"gemma_nvfp4.safetensors: layer 'model.layers.0.mlp.down_proj' is stored in the quantised format "
        r"'nvfp4', which this loader cannot dequantise exactly",
    ):
        load_gemma_weights_only(gemma_mod, path)


def test_unrelated_config_json_beside_a_file_is_ignored(unusual, tmp_path, caplog):
    """models/text_encoders/ may hold some other model's config.json: it must not be taken as Gemma's."""
    from newbie_core.text import gemma as gemma_mod

    cfg, model = unusual
    folder = tmp_path / "text_encoders"
    write_hf_folder(folder, model, cfg)
    (folder / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 4096, "num_layers": 24}))
    with caplog.at_level("INFO", logger="newbie"):
        encoder = load_gemma_weights_only(gemma_mod, folder / "model.safetensors")
    assert encoder.config.num_hidden_layers == 4  # depth from the file
    assert any("it describes a 't5' model, not Gemma3" in r.message for r in caplog.records)


def test_header_quantization_metadata_is_honoured(unusual, tmp_path):
    """``_quantization_metadata`` in the safetensors header (what core passes on as llama_quantization_metadata)."""
    from newbie_core.text import gemma as gemma_mod

    cfg, model = unusual
    path = tmp_path / "gemma_mixed.safetensors"
    sd = {"model." + k: v.contiguous() for k, v in model.state_dict().items()}
    meta = {"format_version": "1.0", "layers": {"model.layers.1.self_attn.o_proj": {"format": "mxfp8"}}}
    save_file(sd, str(path), metadata={"_quantization_metadata": json.dumps(meta)})
    with pytest.raises(CheckpointError, match=r"layer 'model.layers.1.self_attn.o_proj' is stored in the quantised "
                       r"format 'mxfp8'"):  # fmt: skip
        load_gemma_weights_only(gemma_mod, path)
