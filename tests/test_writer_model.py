"""The writer's Gemma: the encoder's own modules plus the top layer, final norm and tied head, read once."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from text_helpers import gemma_spm, save_gemma_comfy, tiny_gemma

from newbie_core.errors import CheckpointError
from newbie_core.text import load_gemma
from newbie_core.weights import TensorReader
from newbie_core.writer import writer_for_encoder, writer_from_state


@pytest.fixture(scope="module")
def gemma_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("writer")
    ref = tiny_gemma(vocab=360, seed=5)
    return save_gemma_comfy(ref, root / "gemma_tiny.safetensors", gemma_spm()), ref


def _reference_logits(ref, ids):
    with torch.no_grad():
        hidden = ref(torch.tensor([ids])).last_hidden_state[0, -1]  # all layers + final norm
    return hidden @ ref.embed_tokens.weight.T  # Gemma ties the head to the embedding


def test_writer_logits_equal_the_full_reference_model(gemma_file):
    path, ref = gemma_file
    encoder, tok = load_gemma(path, dtype=torch.float32)
    lm = writer_for_encoder(encoder)
    ids = tok.encode("<character_1><n>rem</n> 1girl, smile")
    assert torch.allclose(lm.next_logits(torch.tensor([ids])), _reference_logits(ref, ids), atol=1e-4)
    # and the encoder itself is untouched: still hidden_states[-2]
    with torch.no_grad():
        want = ref(torch.tensor([ids]), output_hidden_states=True).hidden_states[-2]
        got = encoder(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    assert torch.allclose(got, want, atol=1e-5)


def test_writer_and_encoder_share_every_weight(gemma_file):
    path, _ = gemma_file
    encoder, _ = load_gemma(path, dtype=torch.float32)
    lm = writer_for_encoder(encoder)
    enc_params = dict(encoder.model.named_parameters())
    shared = 0
    for name, p in lm.lm.named_parameters():
        if name in enc_params:
            assert p is enc_params[name] and p.data_ptr() == enc_params[name].data_ptr(), name
            shared += 1
    assert shared == len(enc_params)
    assert lm.head_weight().data_ptr() == encoder.model.embed_tokens.weight.data_ptr()
    # the encoder owns every writer weight (so whoever moves or offloads it moves them all), once
    owned = {p.data_ptr() for p in encoder.parameters()}
    assert {p.data_ptr() for p in lm.lm.parameters()} <= owned
    n_enc = sum(p.numel() for p in encoder.model.parameters())
    n_top = sum(p.numel() for p in encoder.generation_head.parameters())
    assert sum(p.numel() for p in encoder.parameters()) == n_enc + n_top
    assert sum(p.numel() for p in lm.lm.parameters()) == n_enc + n_top


def test_writer_follows_the_encoder_when_it_is_moved(gemma_file):
    path, ref = gemma_file
    encoder, tok = load_gemma(path, dtype=torch.float32)
    lm = writer_for_encoder(encoder)
    encoder.to(torch.float64)  # what a device/dtype move by ComfyUI's patcher does to the module tree
    assert all(p.dtype == torch.float64 for p in lm.lm.parameters())
    ids = tok.encode("1girl")
    assert lm.next_logits(torch.tensor([ids])).shape == (360,)


def test_only_the_missing_tensors_are_read_and_only_once(gemma_file, monkeypatch):
    path, _ = gemma_file
    encoder, _ = load_gemma(path, dtype=torch.float32)
    reads = []
    original = TensorReader.get

    def spy(self, key):
        reads.append(key)
        return original(self, key)

    monkeypatch.setattr(TensorReader, "get", spy)
    writer_for_encoder(encoder)
    assert reads and all(k.startswith("model.layers.3.") or k == "model.norm.weight" for k in reads)
    assert sorted(reads) == sorted(set(reads))
    assert "model.norm.weight" in reads
    reads.clear()
    assert writer_for_encoder(encoder) is writer_for_encoder(encoder)
    assert reads == []


def test_a_file_without_the_top_layer_is_named(gemma_file, tmp_path):
    path, _ = gemma_file
    sd = load_file(str(path))
    del sd["model.norm.weight"]
    cut = tmp_path / "gemma_no_norm.safetensors"
    save_file(sd, str(cut))
    encoder, _ = load_gemma(cut, dtype=torch.float32)
    with pytest.raises(CheckpointError, match=r"gemma_no_norm.safetensors: missing Gemma key 'model.norm.weight'"):
        writer_for_encoder(encoder)


def test_writer_from_someone_elses_weights_shares_their_storage(gemma_file):
    path, ref = gemma_file
    state = {k: v for k, v in ref.state_dict().items()}
    lm = writer_from_state(state)
    for name, p in lm.lm.named_parameters():
        assert p.data_ptr() == state[name].data_ptr(), name
    ids = [2, 10, 20, 30]
    assert torch.allclose(lm.next_logits(torch.tensor([ids])), _reference_logits(ref, ids), atol=1e-4)


def test_a_scaled_fp8_file_gives_the_weights_it_means(gemma_file, tmp_path):
    path, _ = gemma_file
    sd = load_file(str(path))
    key = "model.layers.3.mlp.down_proj.weight"
    scale = torch.tensor(0.01)
    sd[key] = (sd[key] / scale).to(torch.float8_e4m3fn)
    sd["model.layers.3.mlp.down_proj.scale_weight"] = scale
    q = tmp_path / "gemma_scaled_fp8.safetensors"
    save_file(sd, str(q))
    encoder, _ = load_gemma(q, dtype=torch.float32)
    writer_for_encoder(encoder)
    want = sd[key].float() * scale
    assert torch.equal(encoder.generation_head.last_layer.mlp.down_proj.weight, want)
