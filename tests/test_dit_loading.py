"""load_transformer on every supported layout, and the errors for everything else."""

from __future__ import annotations

import json

import pytest
import torch
from dit_helpers import inputs, save_checkpoint, tiny_model
from safetensors.torch import save_file

from newbie_core import load_transformer
from newbie_core.errors import CheckpointError, ConfigError


@pytest.fixture()
def model():
    return tiny_model(seed=21)


def same_output(a, b, atol=1e-6):
    x, t, cap, pooled = inputs(a.config, batch=1)
    return torch.allclose(a(x, t, cap, None, pooled), b(x, t, cap, None, pooled), atol=atol)


def test_single_file_round_trip_infers_config(model, tmp_path):
    path = save_checkpoint(model, tmp_path / "newbie.safetensors")
    loaded = load_transformer(path)
    assert loaded.config == model.config
    assert same_output(model, loaded)
    assert not loaded.training
    assert all(not p.requires_grad for p in loaded.parameters())


def test_comfy_prefix_and_missing_unused_norm_final(model, tmp_path):
    path = save_checkpoint(
        model, tmp_path / "m.safetensors", prefix="model.diffusion_model.", drop=("norm_final.weight",)
    )
    assert same_output(model, load_transformer(path))


def test_full_comfy_checkpoint_loads_only_the_prefixed_dit(model, tmp_path):
    extra = {
        "vae.decoder.conv_in.weight": torch.zeros(8, 16, 3, 3),
        "text_encoders.gemma.embed.weight": torch.zeros(4, 2),
    }
    path = save_checkpoint(model, tmp_path / "full.safetensors", prefix="model.diffusion_model.", extra=extra)
    assert same_output(model, load_transformer(path))


def test_hf_folder_sharded_with_index_and_config_json(model, tmp_path):
    folder = tmp_path / "NewBie-image-Exp0.1" / "transformer"
    folder.mkdir(parents=True)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    names = sorted(sd)
    half = len(names) // 2
    shards = {
        "diffusion_pytorch_model-00001-of-00002.safetensors": names[:half],
        "diffusion_pytorch_model-00002-of-00002.safetensors": names[half:],
    }
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: sd[k] for k in keys}, str(folder / shard))
        weight_map.update({k: shard for k in keys})
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text(
        json.dumps(
            {
                "_class_name": "NextDiT_3B_GQA_patch2_Adaln_Refiner_WHIT_CLIP",
                "patch_size": 2,
                "in_channels": 16,
                "axes_dims": list(model.config.axes_dims),
                "axes_lens": list(model.config.axes_lens),
            }
        )
    )
    loaded = load_transformer(tmp_path / "NewBie-image-Exp0.1")
    assert loaded.config == model.config
    assert same_output(model, loaded)


def test_uneven_axes_dims_come_from_config_json(tmp_path):
    model = tiny_model(seed=2, axes_dims=(2, 4, 6))
    folder = tmp_path / "transformer"
    folder.mkdir()
    save_checkpoint(model, folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text(json.dumps({"axes_dims": [2, 4, 6]}))
    assert load_transformer(folder).config.axes_dims == (2, 4, 6)


def test_dtype_cast_on_load(model, tmp_path):
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_transformer(path, dtype="bf16")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    x, t, cap, pooled = inputs(model.config, batch=1)
    out = loaded(x, t, cap, None, pooled)
    assert out.dtype == torch.float32  # returned in the caller's dtype, computed in bf16
    ref = model(x, t, cap, None, pooled)
    assert float((out - ref).norm() / ref.norm()) < 0.05


def test_fp8_storage_computes_in_bf16(model, tmp_path):
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("this torch has no float8")
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_transformer(path, dtype="fp8_e4m3fn")
    assert loaded.x_embedder.weight.dtype == torch.float8_e4m3fn
    x, t, cap, pooled = inputs(model.config, batch=1)
    assert loaded.activation_dtype(x) == torch.bfloat16
    assert torch.isfinite(loaded(x, t, cap, None, pooled)).all()


def test_unknown_dtype_is_named(model, tmp_path):
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    with pytest.raises(ConfigError, match=r"^unknown dtype 'fp12'; choose one of: default, bf16, fp16, fp32"):
        load_transformer(path, dtype="fp12")


def test_truncated_file_names_file_and_key(model, tmp_path):
    path = save_checkpoint(model, tmp_path / "cut.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError) as err:
        load_transformer(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: file is truncated: tensor ")
    assert "(re-download the file)" in msg


def test_missing_and_misshaped_keys_are_listed(model, tmp_path):
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    del sd["layers.1.feed_forward.w2.weight"]
    sd["layers.0.attention.out.weight"] = torch.zeros(48, 47)
    sd["layers.0.extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError) as err:
        load_transformer(path)
    assert str(err.value) == (
        f"{path}: does not match the Next-DiT layout: missing keys: layers.1.feed_forward.w2.weight; "
        "unexpected keys: layers.0.extra.weight; "
        "wrong shapes: layers.0.attention.out.weight (file [48, 47], model [48, 48])"
    )


def test_plain_lumina2_checkpoint_is_recognised(tmp_path):
    lumina = tiny_model(clip_text_dim=None)
    path = save_checkpoint(lumina, tmp_path / "lumina.safetensors")
    with pytest.raises(CheckpointError, match="plain Lumina-Image-2.0 style Next-DiT .caption width 40"):
        load_transformer(path)


@pytest.mark.parametrize(
    "keys,what",
    [
        (
            {"model.layers.0.self_attn.q_norm.weight": [4], "model.embed_tokens.weight": [8, 4]},
            "text-encoder file (Gemma)",
        ),
        ({"model.encoder.layers.0.mixer.Wqkv.weight": [12, 4]}, "text-encoder file (Jina CLIP)"),
        ({"decoder.conv_in.weight": [4, 16, 3, 3], "encoder.conv_in.weight": [4, 3, 3, 3]}, "VAE file"),
    ],
)
def test_other_model_files_are_recognised(tmp_path, keys, what):
    path = tmp_path / "wrong.safetensors"
    save_file({k: torch.zeros(s) for k, s in keys.items()}, str(path))
    with pytest.raises(CheckpointError, match=f"^{path}: this is a {what.replace('(', '.').replace(')', '.')}"):
        load_transformer(path)


def test_pickle_files_are_refused_not_unpickled(tmp_path):
    path = tmp_path / "consolidated.00-of-01.pth"
    path.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(
        CheckpointError, match=r"pickled checkpoints \(.pth\) are not loaded because unpickling can run code"
    ):
        load_transformer(path)


def test_garbage_and_missing_files(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"hello")
    with pytest.raises(CheckpointError, match=r"not a safetensors file \(only 5 bytes\)"):
        load_transformer(junk)
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_transformer(tmp_path / "nope.safetensors")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="folder holds no .safetensors transformer weights"):
        load_transformer(empty)


def test_missing_shard_is_named(model, tmp_path):
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"x_embedder.weight": "part-1.safetensors"}}))
    with pytest.raises(CheckpointError, match="shard 'part-1.safetensors' listed in the index is missing"):
        load_transformer(tmp_path)
