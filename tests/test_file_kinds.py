"""The file-kind table: every kind it knows, and the model-folder search that reads it."""

from __future__ import annotations

import shutil

import pytest
import torch
from dit_helpers import save_checkpoint, tiny_model
from safetensors.torch import save_file

from newbie_core import file_kinds as fk
from newbie_core.errors import CheckpointError
from newbie_core.pipeline import find_model_files


def z(*shape):
    return torch.zeros(*shape)


KEYSETS = {
    "newbie_dit": {
        "cap_embedder.1.weight": (8, 4),
        "clip_text_pooled_proj.0.weight": (4,),
        "x_embedder.weight": (8, 4),
    },
    "comfy_newbie_dit": {
        "model.diffusion_model.cap_embedder.1.weight": (8, 4),
        "model.diffusion_model.clip_text_pooled_proj.0.weight": (4,),
    },  # fmt: skip
    "lumina2_dit": {"cap_embedder.1.weight": (8, 4), "x_embedder.weight": (8, 4)},
    "lumina2_diffusers": {"time_caption_embed.caption_embedder.1.weight": (8, 4)},
    "gemma3": {"model.embed_tokens.weight": (10, 8), "model.layers.0.self_attn.q_norm.weight": (4,)},
    "jina_clip_v2": {
        "model.embeddings.word_embeddings.weight": (10, 8),
        "model.encoder.layers.0.mixer.Wqkv.weight": (24, 8),
    },
    "jina_clip_v2_official": {
        "text_model.transformer.roberta.embeddings.word_embeddings.parametrizations.weight.original": (10, 8),
        "text_model.transformer.roberta.embeddings.word_embeddings.parametrizations.weight.0.lora_A": (1, 10, 2),
        "text_model.transformer.roberta.encoder.layers.0.mixer.Wqkv.parametrizations.weight.original": (24, 8),
    },
    "jina_embeddings_v3": {
        "roberta.embeddings.word_embeddings.parametrizations.weight.original": (10, 8),
        "roberta.embeddings.word_embeddings.parametrizations.weight.0.lora_A": (5, 10, 2),
        "roberta.encoder.layers.0.mixer.Wqkv.parametrizations.weight.original": (24, 8),
    },
    "flux_vae": {"decoder.conv_in.weight": (32, 16, 3, 3)},
    "other_vae": {"decoder.conv_in.weight": (32, 4, 3, 3)},
    "lora": {"lycoris_layers_0_attention_qkv.lokr_w1": (2, 2)},
    "unknown": {"encoder.block.0.layer.0.SelfAttention.q.weight": (4, 4)},
}


@pytest.mark.parametrize("name", sorted(KEYSETS))
def test_every_kind_is_recognised_by_its_keys(name):
    expected = {"comfy_newbie_dit": "newbie_dit", "jina_clip_v2_official": "jina_clip_v2"}.get(name, name)
    assert fk.classify(KEYSETS[name]).name == expected


def test_refusals_say_why():
    assert fk.refusal(fk.OTHER_VAE, KEYSETS["other_vae"]) == "its latent has 4 channels, NewBie needs FLUX's 16"
    assert "Lumina-Image-2.0" in fk.refusal(fk.LUMINA2_DIT)
    with pytest.raises(CheckpointError, match=r"^f.safetensors: this is jina-embeddings-v3, not a Jina CLIP v2"):
        fk.require(fk.JINA_CLIP_V2, KEYSETS["jina_embeddings_v3"], "f.safetensors")
    assert (
        fk.wrong_file_hint(fk.GEMMA3, KEYSETS["flux_vae"])
        == " (it is a FLUX VAE (16 latent channels); put it in models/vae)"
    )


def write(path, keys):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: z(*s) for k, s in keys.items()}, str(path))


def test_newbie_dit_is_preferred_over_a_lumina2_file_sorted_before_it(tmp_path):
    models = tmp_path / "models"
    write(models / "diffusion_models" / "a_lumina_2.safetensors", KEYSETS["lumina2_dit"])
    save_checkpoint(tiny_model(), models / "diffusion_models" / "b_newbie.safetensors")
    write(models / "text_encoders" / "gemma.safetensors", KEYSETS["gemma3"])
    write(models / "text_encoders" / "jina.safetensors", KEYSETS["jina_clip_v2"])
    write(models / "vae" / "ae.safetensors", KEYSETS["flux_vae"])
    found = find_model_files(models)
    assert found["transformer"].name == "b_newbie.safetensors"


def test_not_found_message_lists_what_was_seen(tmp_path):
    models = tmp_path / "models"
    write(models / "diffusion_models" / "lumina_2.safetensors", KEYSETS["lumina2_dit"])
    (models / "checkpoints").mkdir()
    (models / "checkpoints" / "newbie.ckpt").write_bytes(b"\x80\x04pickle")
    (models / "diffusion_models" / "newbie-Q4_K_M.gguf").write_bytes(b"GGUF")
    write(models / "text_encoders" / "gemma.safetensors", KEYSETS["gemma3"])
    write(models / "text_encoders" / "jina-embeddings-v3.safetensors", KEYSETS["jina_embeddings_v3"])
    write(models / "vae" / "sd_vae.safetensors", KEYSETS["other_vae"])
    write(models / "loras" / "style.safetensors", KEYSETS["lora"])
    (models / "vae" / "broken.safetensors").write_bytes(b"\x01\x00")
    with pytest.raises(CheckpointError) as info:
        find_model_files(models)
    assert str(info.value) == (
        f"{models}: could not find NewBie diffusion model, Jina CLIP v2 text encoder, FLUX VAE (ae.safetensors). "
        "Seen: checkpoints/newbie.ckpt (skipped: pickles are never loaded (unpickling can run code)); "
        "diffusion_models/lumina_2.safetensors (skipped: it is a Lumina-Image-2.0 model (no clip_text_pooled_proj), "
        "not NewBie); diffusion_models/newbie-Q4_K_M.gguf (skipped: GGUF files are not loaded by this pack (use "
        "safetensors)); loras/style.safetensors (LoRA); text_encoders/gemma.safetensors (Gemma3 text encoder); "
        "text_encoders/jina-embeddings-v3.safetensors (skipped: it is jina-embeddings-v3 (five task adapters), a "
        "different model from Jina CLIP v2); vae/broken.safetensors (skipped: unreadable); "
        "vae/sd_vae.safetensors (skipped: its latent has 4 channels, NewBie needs FLUX's 16)"
    )


def test_sharded_folder_is_one_entry(tmp_path):
    import json

    models = tmp_path / "hf"
    te = models / "text_encoder"
    write(te / "model-00001-of-00002.safetensors", {"language_model.model.embed_tokens.weight": (10, 8)})
    write(te / "model-00002-of-00002.safetensors", {"language_model.model.layers.0.self_attn.q_norm.weight": (4,)})
    (te / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "language_model.model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "language_model.model.layers.0.self_attn.q_norm.weight": "model-00002-of-00002.safetensors"}}))  # fmt: skip
    with pytest.raises(CheckpointError, match=r"Seen: text_encoder \(Gemma3 text encoder\)$"):
        find_model_files(models)
    shutil.rmtree(te)


def test_loaders_name_a_lora_given_in_place_of_a_model(tmp_path):
    from newbie_core.dit import load_transformer
    from newbie_core.vae import load_vae

    path = tmp_path / "style_lora.safetensors"
    write(path, {"diffusion_model.layers.0.attention.qkv.lora_down.weight": (2, 4),
                 "diffusion_model.layers.0.attention.qkv.lora_up.weight": (4, 2)})  # fmt: skip
    with pytest.raises(CheckpointError, match=r"style_lora.safetensors: this is a LoRA file, not the NewBie diffusion"):
        load_transformer(path)
    with pytest.raises(CheckpointError, match=r"\(it is a LoRA; put it in models/loras\)$"):
        load_vae(path)
