"""Token texts and the chat template on a sentencepiece vocabulary set up like Gemma's (turn markers, raw text)."""

from __future__ import annotations

import io

import pytest
from text_helpers import CORPUS

from newbie_core.text.tokenizers import SentencePieceTokenizer
from newbie_core.writer import TokenTable
from newbie_core.writer.prompting import chat_prompt_ids


@pytest.fixture(scope="module")
def tok():
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=buf,
        vocab_size=380,
        model_type="bpe",
        bos_id=2,
        eos_id=1,
        pad_id=0,
        unk_id=3,
        control_symbols=["<start_of_turn>", "<end_of_turn>"],  # not matched in text: only our splice makes them
        normalization_rule_name="identity",  # as Gemma's: newlines kept, no dummy prefix
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        character_coverage=1.0,
        byte_fallback=True,
        num_threads=1,
        minloglevel=2,
    )
    return SentencePieceTokenizer(buf.getvalue(), add_bos=True, add_eos=False)


def test_token_texts_map_pieces_to_the_text_they_add(tok):
    table = TokenTable.for_tokenizer(tok, 400)  # the model's vocabulary may be larger than the tokenizer's
    sp = tok.sp
    assert [table.texts[i] for i in (0, 1, 2, 3)] == [None] * 4  # pad, eos, bos, unk
    assert table.texts[sp.PieceToId("<start_of_turn>")] is None and table.texts[sp.PieceToId("<end_of_turn>")] is None
    assert table.texts[sp.PieceToId("<0x3C>")] == "<" and table.texts[sp.PieceToId("<0x0A>")] == "\n"
    assert table.texts[sp.PieceToId("<0xE3>")] is None  # half of a multi-byte character
    word = next(
        i for i in range(sp.GetPieceSize()) if sp.IdToPiece(i).startswith("\u2581") and len(sp.IdToPiece(i)) > 2
    )
    assert table.texts[word] == " " + sp.IdToPiece(word)[1:]
    assert all(t is None for t in table.texts[sp.GetPieceSize() :])
    assert TokenTable.for_tokenizer(tok, 400) is table  # built once per tokenizer


def test_chat_template_uses_the_turn_marker_tokens(tok):
    sot, eot = tok.sp.PieceToId("<start_of_turn>"), tok.sp.PieceToId("<end_of_turn>")
    ids = chat_prompt_ids(tok, "  a cat  ", instruction="Write XML.")
    enc = tok.encode_plain
    assert ids == [tok.bos_id, sot, *enc("user\nWrite XML.\n\na cat"), eot, *enc("\n"), sot, *enc("model\n")]
    assert tok.sp.DecodeIds(enc("user\nWrite XML.\n\na cat")) == "user\nWrite XML.\n\na cat"
