"""Constrained generation: every output parses, whatever the logits; seeds, cache and budget behave."""

from __future__ import annotations

import io

import pytest
import torch
from text_helpers import gemma_spm, save_gemma_comfy, tiny_gemma

from newbie_core.cli import main
from newbie_core.errors import ConfigError
from newbie_core.text import load_gemma
from newbie_core.text.tokenizers import ByteTokenizer
from newbie_core.writer import TokenTable, WriterSettings, constrained_decode, grammar, write_prompt, writer_for_encoder
from newbie_core.writer.constrained import GrammarDecoder
from newbie_core.xml_prompt import parse

SHORT = "Write a NewBie XML prompt."


@pytest.fixture(autouse=True)
def _one_thread():
    """Token-at-a-time decoding of a toy model gains nothing from threads and loses a lot on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def writer(tmp_path_factory):
    path = save_gemma_comfy(
        tiny_gemma(vocab=360, seed=7, layers=2), tmp_path_factory.mktemp("w") / "g.safetensors", gemma_spm()
    )
    encoder, tok = load_gemma(path, dtype=torch.float32)
    return writer_for_encoder(encoder), tok


def _assert_valid(text: str):
    prompt = parse(text)
    assert prompt.is_xml and prompt.warnings == [], text
    return prompt


def _adversary(table: TokenTable, decoder_of, seed: int):
    """Logits that always rank forbidden tokens first (and end-of-text and specials high too)."""
    gen = torch.Generator().manual_seed(seed)

    def next_logits(_tok):
        decoder = decoder_of()
        logits = torch.randn(len(table.texts), generator=gen)
        left = decoder.budget - 1
        for t in range(len(table.texts)):
            if decoder.check(t, left) is None:
                logits[t] += 20.0
        return logits

    return next_logits


@pytest.mark.parametrize("temperature,top_p", [(1.0, 0.9), (0.0, 1.0), (2.0, 1.0)])
def test_output_parses_even_when_the_logits_always_prefer_invalid_tokens(temperature, top_p, monkeypatch):
    table = TokenTable.for_tokenizer(ByteTokenizer(2, 1, 0, 4, True, False), 260)
    seen = {}
    original_init = GrammarDecoder.__init__

    def remember(self, *a, **k):
        original_init(self, *a, **k)
        seen["decoder"] = self

    monkeypatch.setattr(GrammarDecoder, "__init__", remember)
    for seed in range(4):
        settings = WriterSettings(seed=seed, max_new_tokens=150, temperature=temperature, top_p=top_p)
        tokens = constrained_decode(_adversary(table, lambda: seen["decoder"], seed), table, settings)
        assert len(tokens) <= 150
        text = "".join(table.texts[t] for t in tokens)
        assert seen["decoder"].done
        _assert_valid(text)


def test_budget_exactly_the_shortest_prompt_still_closes():
    table = TokenTable.for_tokenizer(ByteTokenizer(2, 1, 0, 4, True, False), 260)
    need = len(grammar.completion(grammar.START))
    gen = torch.Generator().manual_seed(0)
    tokens = constrained_decode(lambda _t: torch.randn(260, generator=gen), table, WriterSettings(max_new_tokens=need))
    assert len(tokens) == need
    _assert_valid("".join(table.texts[t] for t in tokens))
    with pytest.raises(ConfigError, match=f"max_new_tokens {need - 1} is too small: .* needs {need} tokens"):
        constrained_decode(lambda _t: torch.zeros(260), table, WriterSettings(max_new_tokens=need - 1))


def test_fifty_seeds_on_a_tiny_random_gemma_all_parse_without_warnings(writer):
    lm, tok = writer
    texts = set()
    for seed in range(50):
        out = write_prompt(
            lm, tok, "two girls in a garden", WriterSettings(seed=seed, max_new_tokens=60), instruction=SHORT
        )
        assert len(out.token_ids) <= 60
        _assert_valid(out.text)
        texts.add(out.text)
    assert len(texts) > 40  # the seed matters


def test_same_seed_same_text(writer):
    lm, tok = writer
    s = WriterSettings(seed=11, max_new_tokens=60, temperature=1.3, top_p=0.8)
    a = write_prompt(lm, tok, "a cat", s, instruction=SHORT)
    b = write_prompt(lm, tok, "a cat", s, instruction=SHORT)
    assert a.token_ids == b.token_ids and a.text == b.text


def test_kv_cache_gives_the_same_tokens_as_recomputing(writer):
    lm, tok = writer
    for seed in (0, 1):
        cached = write_prompt(lm, tok, "rain", WriterSettings(seed=seed, max_new_tokens=50), instruction=SHORT)
        plain = write_prompt(
            lm, tok, "rain", WriterSettings(seed=seed, max_new_tokens=50, use_cache=False), instruction=SHORT
        )
        assert cached.token_ids == plain.token_ids


def test_completing_a_partial_prompt_keeps_it_verbatim(writer):
    lm, tok = writer
    partial = "<character_1>\n<n>rem_\\(re:zero\\)</n>\n<gender>1girl</gender>\n<appearance>blue_hair, "
    out = write_prompt(lm, tok, "", WriterSettings(seed=3, max_new_tokens=80), partial=partial, instruction=SHORT)
    assert out.text.startswith(partial)
    prompt = _assert_valid(out.text)
    assert prompt.characters[0].fields["n"] == "rem_\\(re:zero\\)"
    with pytest.raises(ConfigError, match=r"partial prompt, line 2, column 3: .*expected one of <n>"):
        write_prompt(lm, tok, "", partial="<character_1>\n<nope>")


def test_settings_are_validated_with_their_names():
    for bad, word in [
        (WriterSettings(max_new_tokens=0), "max_new_tokens"),
        (WriterSettings(temperature=-1), "temperature"),
        (WriterSettings(top_p=0), "top_p"),
    ]:
        with pytest.raises(ConfigError, match=word):
            bad.validate()


def _cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    rc = main(["write", *argv], stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def test_cli_write_on_the_tiny_default_is_valid_and_deterministic():
    rc, out, err = _cli("a girl with red hair", "--seed", "4", "--max-new-tokens", "80")
    assert rc == 0, err
    assert "tiny smoke-test model" in err
    _assert_valid(out)
    assert _cli("a girl with red hair", "--seed", "4", "--max-new-tokens", "80")[1] == out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["x", "--max-new-tokens", "0"], "error: --max-new-tokens must be 1..4096, got 0"),
        (["x", "--temperature", "-0.5"], "error: --temperature must be 0..10 (0 = greedy), got -0.5"),
        (["x", "--top-p", "1.5"], "error: --top-p must be in (0, 1], got 1.5"),
        (["x", "--max-new-tokens", "10"], "error: max_new_tokens 10 is too small"),
        (["x", "--complete", "<general_tags><n>"], "error: partial prompt, line 1, column 16"),
    ],
)
def test_cli_write_bad_input_is_one_line(argv, message):
    rc, out, err = _cli(*argv)
    assert rc == 2 and out == ""
    assert message in err


def test_cli_write_with_a_models_dir_uses_its_gemma(tmp_path):
    from model_files import write_tiny_models

    write_tiny_models(tmp_path)
    args = ["a cat on a sofa", "--models-dir", str(tmp_path), "--dtype", "fp32", "--max-new-tokens", "64"]
    rc, out, err = _cli(*args)
    assert rc == 0, err
    assert "gemma_tiny.safetensors" in err
    _assert_valid(out)


@pytest.mark.parametrize("scale,top_p", [(0.5, 0.9), (0.5, 0.3), (6.0, 0.95)])
def test_nucleus_is_the_smallest_most_probable_set(scale, top_p):
    """Against a full sort, on flat distributions (the bisection path) and peaked ones (the top-k path)."""
    from newbie_core.writer.constrained import _nucleus

    probs = torch.softmax(torch.randn(100_000, generator=torch.Generator().manual_seed(1)) * scale, 0)
    p, ids = _nucleus(probs, top_p)
    sp, sids = torch.sort(probs, descending=True)
    n = int(((torch.cumsum(sp, 0) - sp) < top_p).sum())
    assert set(ids.tolist()) == set(sids[:n].tolist())
    assert torch.equal(p, probs[ids])
