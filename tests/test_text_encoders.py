"""Text conditioning: Gemma layer and mask, Jina pooled vector, the training split, limits, files."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file
from text_helpers import gemma_spm, jina_spm, save_gemma_comfy, save_jina_comfy, tiny_gemma, tiny_jina

from newbie_core.errors import CheckpointError
from newbie_core.text import SYSTEM_PROMPTS, load_gemma, load_jina, load_text_encoders
from newbie_core.text.conditioning import system_prompt_for
from newbie_core.text.tokenizers import SentencePieceTokenizer


@pytest.fixture(scope="module")
def blobs():
    return {"gemma": gemma_spm(), "jina": jina_spm()}


@pytest.fixture(scope="module")
def files(tmp_path_factory, blobs):
    root = tmp_path_factory.mktemp("te")
    gemma_ref = tiny_gemma(vocab=360, seed=1)
    jina_ref = tiny_jina(vocab=360, seed=2)
    return {
        "gemma": save_gemma_comfy(gemma_ref, root / "gemma_tiny.safetensors", blobs["gemma"]),
        "jina": save_jina_comfy(jina_ref, root / "jina_tiny.safetensors", blobs["jina"]),
        "gemma_ref": gemma_ref,
        "jina_ref": jina_ref,
        "root": root,
    }


@pytest.fixture(scope="module")
def encoders(files):
    return load_text_encoders(files["gemma"], files["jina"], dtype="fp32")


# ------------------------------------------------------------------------------ Gemma


def test_gemma_returns_second_to_last_hidden_state_unnormalised(files, encoders, blobs):
    tok = SentencePieceTokenizer(blobs["gemma"], add_bos=True, add_eos=False)
    texts = ["1girl, solo, smile", "a quiet street at night, rain, neon lights, reflections, 1girl"]
    out = encoders.encode(texts, system_prompt="none")
    assert out.hidden.shape[0] == 2 and out.hidden.shape[2] == 64
    assert out.hidden.shape[1] % 8 == 0  # padded to a multiple of 8 as in training
    for i, text in enumerate(texts):
        ids = tok.encode(text)
        assert ids[0] == 2  # BOS, no EOS
        assert out.mask[i].tolist() == [1] * len(ids) + [0] * (out.mask.shape[1] - len(ids))
        with torch.no_grad():
            ref = files["gemma_ref"](torch.tensor([ids]), output_hidden_states=True).hidden_states[-2][0]
        assert torch.allclose(out.hidden[i, : len(ids)], ref, atol=1e-5)


def test_gemma_loads_one_layer_less_and_no_final_norm(encoders):
    assert encoders.gemma.config.num_hidden_layers == 3
    assert isinstance(encoders.gemma.model.norm, torch.nn.Identity)


def test_gemma_truncates_at_512_tokens_with_warning(encoders):
    prompt = " ".join(f"tag{i}" for i in range(200))
    n = len(encoders.gemma_tokenizer.encode(prompt))
    assert n > 512
    with pytest.warns(
        UserWarning,
        match=rf"Gemma prompt 1 is {n} tokens; training used at most 512, so the last {n - 512} tokens were dropped",
    ):
        out = encoders.encode(prompt, system_prompt="none")
    assert int(out.mask[0].sum()) == 512
    assert out.dropped_tokens == [n - 512]


def test_hf_folder_layout_with_config_and_tokenizer_file(files, blobs, tmp_path):
    folder = tmp_path / "gemma-3-4b-it"
    folder.mkdir()
    sd = {"language_model.model." + k: v.contiguous() for k, v in files["gemma_ref"].state_dict().items()}
    sd["vision_tower.vision_model.embeddings.patch_embedding.weight"] = torch.zeros(2, 3, 1, 1)
    save_file(sd, str(folder / "model-00001-of-00001.safetensors"))
    cfg = files["gemma_ref"].config.to_dict()
    (folder / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": cfg}))
    (folder / "tokenizer.model").write_bytes(blobs["gemma"])
    gemma, tok = load_gemma(folder)
    ids = torch.tensor([tok.encode("1girl, smile")])
    with torch.no_grad():
        ref = files["gemma_ref"](ids, output_hidden_states=True).hidden_states[-2]
        assert torch.allclose(gemma(ids, torch.ones_like(ids)), ref, atol=1e-5)


# ------------------------------------------------------------------------------ Jina


def naive_jina_pooled(sd, ids, heads, eps=1e-5, base=20000.0):
    """Float64, one token loop at a time where it matters; written from the architecture notes."""
    sd = {k: v.double() for k, v in sd.items()}

    def ln(x, name):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + eps) * sd[name + ".weight"] + sd[name + ".bias"]

    def lin(x, name):
        return x @ sd[name + ".weight"].T + sd[name + ".bias"]

    x = sd["embeddings.word_embeddings.weight"][ids] + sd["embeddings.token_type_embeddings.weight"][0]
    x = ln(x, "emb_ln")
    s, hidden = x.shape
    hd = hidden // heads
    n_layers = len({k.split(".")[2] for k in sd if k.startswith("encoder.layers.")})
    for i in range(n_layers):
        p = f"encoder.layers.{i}"
        qkv = lin(x, p + ".mixer.Wqkv").view(s, 3, heads, hd)
        outs = []
        for h in range(heads):
            q, k, v = qkv[:, 0, h], qkv[:, 1, h], qkv[:, 2, h]
            rot = []
            for name, t in (("q", q), ("k", k)):
                r = torch.empty_like(t)
                for pos in range(s):
                    for j in range(hd // 2):
                        ang = pos / base ** (2 * j / hd)
                        a, b = t[pos, j], t[pos, j + hd // 2]
                        r[pos, j] = a * math.cos(ang) - b * math.sin(ang)
                        r[pos, j + hd // 2] = b * math.cos(ang) + a * math.sin(ang)
                rot.append(r)
            scores = rot[0] @ rot[1].T / math.sqrt(hd)
            outs.append(torch.softmax(scores, -1) @ v)
        attn = lin(torch.cat(outs, -1), p + ".mixer.out_proj")
        x = ln(attn + x, p + ".norm1")
        h1 = lin(x, p + ".mlp.fc1")
        h1 = 0.5 * h1 * (1 + torch.erf(h1 / math.sqrt(2)))
        x = ln(lin(h1, p + ".mlp.fc2") + x, p + ".norm2")
    return x.mean(0)


def test_jina_pooled_equals_naive_reference(files, encoders, blobs):
    tok = SentencePieceTokenizer(blobs["jina"], add_bos=True, add_eos=True, pad_id=1)
    prompts = ["1girl, solo, smile", "<character_1><n>rem</n></character_1> rain"]
    out = encoders.encode(prompts, system_prompt="xml")
    sd = files["jina_ref"].state_dict()
    for i, p in enumerate(prompts):
        ids = tok.encode(p)
        assert ids[0] == 0 and ids[-1] == 2
        ref = naive_jina_pooled(sd, torch.tensor(ids), heads=2)
        assert torch.allclose(out.pooled[i].double(), ref, atol=1e-5)


def official_jina_file(base: dict, folder, tasks: int = 1, rank: int = 2, seed: int = 5, prefix=None):
    """The official jinaai/jina-clip-v2 layout: text tower under ``text_model.transformer.roberta.``, every
    weight-bearing module as a torch parametrization with a [T, ...] LoRA, vision tower and logit_scale beside it.

    Returns the naive reference state dict with the first task's adapter merged at ``scale`` = alpha / rank.
    """
    prefix = "text_model.transformer.roberta." if prefix is None else prefix
    gen = torch.Generator().manual_seed(seed)
    parametrized = ("mixer.Wqkv.weight", "mixer.out_proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")
    sd, deltas = {}, {}
    for name, w in base.items():
        key = prefix + name
        if name.endswith(parametrized) or name.startswith("embeddings."):
            stem = key.replace(".weight", ".parametrizations.weight")
            sd[stem + ".original"] = w
            if name.startswith("embeddings."):  # A [T, fan_in(vocab), r], B [T, r, dim]; delta = A[t] @ B[t]
                a = torch.randn(tasks, w.shape[0], rank, generator=gen) * 0.3
                b = torch.randn(tasks, rank, w.shape[1], generator=gen) * 0.3
                deltas[name] = a[0] @ b[0]
            else:  # A [T, r, fan_in], B [T, fan_out, r]; delta = B[t] @ A[t]
                a = torch.randn(tasks, rank, w.shape[1], generator=gen) * 0.3
                b = torch.randn(tasks, w.shape[0], rank, generator=gen) * 0.3
                deltas[name] = b[0] @ a[0]
            sd[stem + ".0.lora_A"], sd[stem + ".0.lora_B"] = a, b
        else:
            sd[key] = w
    sd["vision_model.patch_embed.proj.weight"] = torch.zeros(4, 3, 2, 2)
    sd["logit_scale"] = torch.tensor(2.6592)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    return deltas


def xlmr_tokenizer_json(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": 4 + i for i in range(300)}}
    hf_tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    hf_tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf_tok.save(str(folder / "tokenizer.json"))


JINA_CLIP_V2_CONFIG = {
    "architectures": ["JinaCLIPModel"],
    "add_projections": False,
    "model_type": "jina_clip",
    "text_config": {
        "default_lora_task": "retrieval.query",
        "default_instruction_task": None,
        "hf_model_config_kwargs": {"load_trained_adapters": False, "lora_adaptations": ["retrieval.query"]},
    },
}


@pytest.mark.parametrize("alpha", [None, 4.0])
def test_official_jina_layout_merges_retrieval_query_lora_like_naive_reference(files, tmp_path, alpha):
    folder = tmp_path / "jina-clip-v2"
    base = files["jina_ref"].state_dict()
    rank = 2
    deltas = official_jina_file(base, folder, rank=rank)
    cfg = json.loads(json.dumps(JINA_CLIP_V2_CONFIG))
    cfg["text_config"]["hf_model_config_kwargs"]["num_attention_heads"] = 2
    if alpha is not None:
        cfg["text_config"]["hf_model_config_kwargs"]["lora_alpha"] = alpha
    (folder / "config.json").write_text(json.dumps(cfg))
    xlmr_tokenizer_json(folder)
    scale = (alpha or 1.0) / rank  # alpha / r, alpha 1 when the config does not state it
    merged = {k: w + deltas[k] * scale if k in deltas else w for k, w in base.items()}
    assert len(deltas) == 2 + 4 * 2  # both embeddings and the four linears of each of the 2 layers

    model, tok, info = load_jina(folder)
    assert info["lora"] == f"merged retrieval.query adapter into 10 tensors (alpha {alpha or 1.0})"
    assert info["assumed"] == ([] if alpha else ["LoRA alpha 1 (config.json states no lora_alpha)"])
    ids = tok.encode("w1 w2 w7 zzz")
    assert ids == [0, 5, 6, 11, 3, 2]
    ref = naive_jina_pooled(merged, torch.tensor(ids), heads=2)
    got = model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    # float32 against float64 with 1-2 ulp per op: the bound holds for any thread count (OMP_NUM_THREADS=1 too)
    assert float((got[0].double() - ref).norm() / ref.norm()) <= 1e-5
    unmerged = naive_jina_pooled(base, torch.tensor(ids), heads=2)
    assert not torch.allclose(got[0].double(), unmerged, atol=1e-3)  # the adapter really changes the vector


def test_newbie_clip_model_folder_in_either_form_gives_the_same_vector(files, blobs, tmp_path):
    """NewBie's HF ``clip_model/`` holds model.safetensors (official) and/or jina-clip-v2.safetensors (repackage)."""
    base = files["jina_ref"].state_dict()
    only_official = tmp_path / "a" / "clip_model"
    deltas = official_jina_file(base, only_official, rank=2)
    (only_official / "config.json").write_text(json.dumps(JINA_CLIP_V2_CONFIG))
    merged = {k: (w + deltas[k] * 0.5) if k in deltas else w for k, w in base.items()}
    repack = tmp_path / "b" / "clip_model"
    repack.mkdir(parents=True)
    from newbie_core.text.jina import JinaTextConfig, JinaTextModel

    merged_model = JinaTextModel(
        JinaTextConfig(vocab_size=360, hidden_size=128, num_layers=2, num_heads=2, intermediate_size=96)
    )
    merged_model.load_state_dict(merged)
    save_jina_comfy(merged_model, repack / "jina-clip-v2.safetensors", blobs["jina"])
    both = tmp_path / "c" / "clip_model"
    both.mkdir(parents=True)
    for src in (
        only_official / "model.safetensors",
        only_official / "config.json",
        repack / "jina-clip-v2.safetensors",
    ):
        (both / src.name).write_bytes(src.read_bytes())
    xlmr_tokenizer_json(only_official)
    ids = torch.tensor([[0, 7, 9, 11, 2]])
    outs = [load_jina(folder)[0](ids, torch.ones_like(ids)) for folder in (only_official, repack, both)]
    assert torch.allclose(outs[0], outs[1], atol=1e-5) and torch.allclose(outs[0], outs[2], atol=1e-5)


def test_jina_without_config_says_what_it_assumed(files, tmp_path, caplog):
    folder = tmp_path / "jina"
    official_jina_file(files["jina_ref"].state_dict(), folder, rank=2)
    xlmr_tokenizer_json(folder)
    with caplog.at_level("INFO", logger="newbie"):
        _model, _tok, info = load_jina(folder)
    assert info["assumed"] == [
        "2 attention heads of 64 (no config.json states num_attention_heads)",
        "the file's single adapter is 'retrieval.query' (no config.json lists lora_adaptations)",
        "LoRA alpha 1 (config.json states no lora_alpha)",
    ]
    assert sum("Jina" in r.message and "assumed" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize("layout", ["five_adapters", "roberta_prefix"])
def test_jina_embeddings_v3_is_refused_by_name(files, tmp_path, layout):
    folder = tmp_path / "jina-embeddings-v3"
    if layout == "five_adapters":
        official_jina_file(files["jina_ref"].state_dict(), folder, tasks=5, rank=2, prefix="roberta.")
    else:
        official_jina_file(files["jina_ref"].state_dict(), folder, tasks=1, rank=2, prefix="roberta.")
    n = 5 if layout == "five_adapters" else 1
    with pytest.raises(
        CheckpointError,
        match=rf"model.safetensors: this is jina-embeddings-v3 \({n} task adapters, keys under 'roberta.'\), "
        "a different model from Jina CLIP v2",
    ):
        load_jina(folder)


def test_jina_2048_cap_keeps_closing_token(encoders):
    prompt = " ".join(f"tag{i}" for i in range(1200))
    ids = encoders.jina_tokenizer.encode(prompt)
    assert len(ids) > 2048
    with pytest.warns(UserWarning, match=rf"Jina prompt 1 is {len(ids)} tokens"):
        (row,) = encoders.jina_ids([prompt])
    assert len(row) == 2048
    assert row[0] == 0 and row[-1] == 2  # <s> ... </s>, as HF truncation keeps the specials
    assert row[:-1] == ids[:2047]


# ------------------------------------------------------------------------------ the split


def test_system_prompt_goes_to_gemma_only(encoders):
    prompt = "<character_1><n>rem</n><gender>1girl</gender></character_1>"
    out = encoders.encode(prompt)  # auto -> xml preset
    manual = encoders.encode_ids(
        [encoders.gemma_tokenizer.encode(SYSTEM_PROMPTS["xml"] + prompt)], [encoders.jina_tokenizer.encode(prompt)]
    )
    assert torch.equal(out.hidden, manual.hidden) and torch.equal(out.pooled, manual.pooled)
    bare = encoders.encode(prompt, system_prompt="none")
    assert torch.equal(bare.pooled, out.pooled)  # Jina never sees the system prompt
    assert int(bare.mask.sum()) < int(out.mask.sum())


def test_presets():
    assert system_prompt_for("1girl, smile") == SYSTEM_PROMPTS["tags"]
    assert system_prompt_for("<caption>x</caption>") == SYSTEM_PROMPTS["xml"]
    assert system_prompt_for("", "negative") == ""  # empty prompts get no system prompt (as in training)
    assert system_prompt_for("blurry", "negative").endswith(
        "low-quality images based on textual prompts. <Prompt Start> "
    )
    assert system_prompt_for("x", "custom", "Be nice.") == "Be nice. "
    with pytest.raises(
        ValueError, match="unknown system prompt preset 'fancy'; choose one of: auto, xml, tags, negative, none, custom"
    ):
        system_prompt_for("x", "fancy")


def test_batches_match_single_prompts_and_are_deterministic(encoders):
    prompts = ["1girl, smile", "a quiet street at night, rain, neon lights"]
    both = encoders.encode(prompts)
    for i, p in enumerate(prompts):
        one = encoders.encode(p)
        n = int(one.mask.sum())
        assert torch.allclose(both.hidden[i, :n], one.hidden[0, :n], atol=1e-5)
        assert torch.allclose(both.pooled[i], one.pooled[0], atol=1e-5)
    hidden, mask, pooled = encoders.encode(prompts)
    assert torch.equal(hidden, both.hidden) and torch.equal(mask, both.mask) and torch.equal(pooled, both.pooled)


# ------------------------------------------------------------------------------ bad files


def test_swapped_files_are_named(files):
    with pytest.raises(
        CheckpointError,
        match=r"jina_tiny.safetensors: no 'embed_tokens.weight' key: this is not a Gemma3 text-encoder file \(it is the Jina CLIP v2 text encoder file; the two inputs are swapped\)",
    ):
        load_text_encoders(files["jina"], files["gemma"])


def test_truncated_text_encoder_file(files, tmp_path):
    cut = tmp_path / "gemma_cut.safetensors"
    data = files["gemma"].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"^{cut}: file is truncated: tensor '"):
        load_gemma(cut)


def test_missing_key_is_named(files, tmp_path):
    from safetensors.torch import load_file

    sd = load_file(str(files["jina"]))
    del sd["model.encoder.layers.1.mlp.fc2.bias"]
    path = tmp_path / "jina_missing.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match=rf"^{path}: missing Jina key 'model.encoder.layers.1.mlp.fc2.bias'$"):
        load_jina(path)


def test_missing_tokenizer_is_reported(files, tmp_path):
    path = save_jina_comfy(files["jina_ref"], tmp_path / "jina_no_tok.safetensors", None)
    with pytest.raises(CheckpointError, match="no Jina tokenizer found"):
        load_jina(path)


def test_escaped_parentheses_reach_encoders_unescaped_by_default(encoders):
    plain = encoders.encode("1girl, (medium), smile")
    escaped = encoders.encode(r"1girl, \(medium\), smile")
    literal = encoders.encode(r"1girl, \(medium\), smile", escapes="literal")
    assert torch.equal(escaped.hidden, plain.hidden) and torch.equal(escaped.pooled, plain.pooled)
    assert int(literal.mask.sum()) > int(plain.mask.sum())
    from newbie_core.text import apply_escapes

    assert apply_escapes(r"a \(b\) (c:1.2) \\x") == r"a (b) (c:1.2) \\x"  # no weight parsing, other escapes kept
    with pytest.raises(ValueError, match="unknown escape mode 'raw'; choose one of: unescape, literal"):
        apply_escapes("x", "raw")


def test_scaled_fp8_jina_is_dequantised(files, blobs, tmp_path):
    """ComfyUI's scaled-fp8 layout (``scaled_fp8`` marker, per-tensor ``.scale_weight``): weight x scale, never a bare cast."""
    sd, deq = {}, {}
    for name, w in files["jina_ref"].state_dict().items():
        if name.endswith(("Wqkv.weight", "fc1.weight", "fc2.weight", "out_proj.weight")):
            scale = w.abs().max() / 448.0
            q = (w / scale).to(torch.float8_e4m3fn)
            sd["model." + name], sd["model." + name[: -len(".weight")] + ".scale_weight"] = q, scale.reshape(())
            deq[name] = q.float() * scale
        else:
            sd["model." + name], deq[name] = w, w
    sd["model.scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)
    sd["spiece_model"] = torch.frombuffer(bytearray(blobs["jina"]), dtype=torch.uint8)
    path = tmp_path / "jina_fp8_scaled.safetensors"
    save_file(sd, str(path))
    model, tok, info = load_jina(path, dtype=torch.float32)
    assert info["dequantised"]
    ids = tok.encode("1girl, solo, smile")
    got = model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    assert torch.allclose(got[0].double(), naive_jina_pooled(deq, torch.tensor(ids), heads=2), atol=1e-5)
