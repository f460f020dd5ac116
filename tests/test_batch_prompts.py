"""Prompt lists for `batch`: JSONL, text and CSV readers, typed overrides, and one-line errors naming the line."""

from __future__ import annotations

import pytest

from newbie_core.batch.plan import item_seed, make_batches, share
from newbie_core.batch.prompts import PromptListError, read_prompt_list
from newbie_core.batch.run import setting_fields

FIELDS = setting_fields()


def read(tmp_path, name, text, fmt="auto"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return read_prompt_list(path, FIELDS, fmt)


def refused(tmp_path, name, text, fmt="auto"):
    with pytest.raises(PromptListError) as err:
        read(tmp_path, name, text, fmt)
    return str(err.value).replace(str(tmp_path) + "/", "")


def test_item_keys_are_generates_sampling_flags():
    assert set(FIELDS) == {
        "negative",
        "seed",
        "steps",
        "cfg",
        "cfg_trunc",
        "renorm",
        "solver",
        "shift",
        "width",
        "height",
        "allow_large",
        "system_prompt",
    }
    assert FIELDS["steps"].kind is int and FIELDS["cfg"].kind is float and FIELDS["negative"].kind is str
    from newbie_core.solvers import SOLVERS

    assert FIELDS["solver"].choices == tuple(SOLVERS)  # the solver registry, read through the flag


def test_jsonl_items_with_ids_overrides_and_line_numbers(tmp_path):
    items = read(
        tmp_path,
        "p.jsonl",
        '{"prompt": "a", "id": "cat-1", "steps": 3, "cfg": 4, "negative": "blurry"}\n'
        "\n"
        '{"prompt": "b", "seed": 9, "solver": "euler", "width": null}\n'
        '{"prompt": "c", "id": 12}\n',
    )
    assert [(i.line, i.id, i.prompt) for i in items] == [(1, "cat-1", "a"), (3, "000003", "b"), (4, "12", "c")]
    assert items[0].overrides == {"steps": 3, "cfg": 4.0, "negative": "blurry"}
    assert isinstance(items[0].overrides["cfg"], float)
    assert items[1].overrides == {"seed": 9, "solver": "euler"}


def test_text_list_one_prompt_per_line_blank_lines_skipped(tmp_path):
    items = read(tmp_path, "p.txt", "1girl, smile\n\n  \n<character_1><n>rem</n></character_1>\r\nlast")
    assert [(i.line, i.id, i.prompt) for i in items] == [
        (1, "000001", "1girl, smile"),
        (4, "000004", "<character_1><n>rem</n></character_1>"),
        (5, "000005", "last"),
    ]
    assert all(i.overrides == {} for i in items)


def test_csv_with_header_typed_cells_empty_cells_and_multiline_quotes(tmp_path):
    items = read(
        tmp_path,
        "p.csv",
        "\ufeffid,prompt,steps,cfg\n"  # Excel's BOM
        'a,"1girl, smile",3,\n'
        ',"two\nlines",,2.5\n'
        "c,plain,1,1\n",
    )
    assert [(i.line, i.id, i.prompt) for i in items] == [
        (2, "a", "1girl, smile"),
        (3, "000003", "two\nlines"),
        (5, "c", "plain"),
    ]
    assert items[0].overrides == {"steps": 3}
    assert items[1].overrides == {"cfg": 2.5}
    assert items[2].overrides == {"steps": 1, "cfg": 1.0}


@pytest.mark.parametrize(
    "name,text,message",
    [
        (
            "p.jsonl",
            '{"prompt": "a"}\n{"prompt": "b",}\n',
            "p.jsonl:2: not valid JSON: Expecting property name enclosed in double quotes (column 16)",
        ),
        ("p.jsonl", '{"prompt": "a"}\n["b"]\n', 'p.jsonl:2: expected a JSON object like {"prompt": "..."}'),
        ("p.jsonl", '{"id": "x"}\n', "p.jsonl:1: 'prompt' is missing or not a string"),
        ("p.jsonl", '{"prompt": "   "}\n', "p.jsonl:1: empty prompt"),
        (
            "p.jsonl",
            '\n\n{"prompt": "a", "negtive": "b"}\n',
            "p.jsonl:3: unknown key 'negtive'; known: prompt, id, negative, seed, steps, cfg, cfg_trunc, renorm, solver, shift, width, height, allow_large, system_prompt",
        ),
        ("p.jsonl", '{"prompt": "a", "steps": "20"}\n', "p.jsonl:1: 'steps' must be a whole number, got '20'"),
        ("p.jsonl", '{"prompt": "a", "steps": 2.5}\n', "p.jsonl:1: 'steps' must be a whole number, got 2.5"),
        ("p.jsonl", '{"prompt": "a", "seed": true}\n', "p.jsonl:1: 'seed' must be a whole number, got True"),
        ("p.jsonl", '{"prompt": "a", "cfg": NaN}\n', "p.jsonl:1: 'cfg' must be a finite number, got nan"),
        (
            "p.jsonl",
            '{"prompt": "a", "solver": "rk9"}\n',
            "p.jsonl:1: 'solver' must be one of euler, midpoint, rk4, dpm, got 'rk9'",
        ),
        (
            "p.jsonl",
            '{"prompt": "a", "id": "../x"}\n',
            "p.jsonl:1: id '../x' cannot be a file name: use up to 128 letters, digits, '_', '.' and '-', starting with a letter, digit or '_'",
        ),
        (
            "p.jsonl",
            '{"prompt": "a", "id": "x"}\n{"prompt": "b"}\n{"prompt": "c", "id": "x"}\n',
            "p.jsonl:3: duplicate id 'x' (first on line 1)",
        ),
        (
            "p.jsonl",
            '{"prompt": "a", "id": "Cat"}\n{"prompt": "b", "id": "cat"}\n',
            "p.jsonl:2: id 'cat' differs from 'Cat' (line 1) only in case; they would be one file on Windows and macOS",
        ),
        (
            "p.jsonl",
            '{"prompt": "a", "id": "000002"}\n{"prompt": "b"}\n',
            "p.jsonl:2: duplicate id '000002' (first on line 1)",
        ),
        ("p.jsonl", "\n \n", "p.jsonl: no prompts in the list"),
        ("p.txt", b"ok\nalso ok\n\xff\xfe bad\n", "p.txt:3: not UTF-8 text (byte 11)"),
        ("p.csv", "prompt,steps\na,1\nb,1,2\n", "p.csv:3: 3 fields, but the header has 2"),
        (
            "p.csv",
            "prompt,step\na,1\n",
            "p.csv:1: unknown column 'step'; known: prompt, id, negative, seed, steps, cfg, cfg_trunc, renorm, solver, shift, width, height, allow_large, system_prompt",
        ),
        ("p.csv", "id,steps\na,1\n", "p.csv:1: the header has no 'prompt' column"),
        ("p.csv", "prompt,prompt\na,b\n", "p.csv:1: column 'prompt' appears twice in the header"),
        ("p.csv", "prompt,cfg\na,high\n", "p.csv:2: 'cfg' must be a number, got 'high'"),
        ("p.csv", 'prompt\n"a\n', "p.csv:2: malformed CSV: unexpected end of data"),
        (
            "p.json",
            '[{"prompt": "a"}]',
            "p.json: cannot tell the format from the name; give --format jsonl, csv or text (known endings: .jsonl, .ndjson, .csv, .txt)",
        ),
    ],
)
def test_malformed_lists_name_the_line(tmp_path, name, text, message):
    assert refused(tmp_path, name, text) == message


def test_format_flag_overrides_the_ending(tmp_path):
    items = read(tmp_path, "list.dat", '{"prompt": "a"}\n', fmt="jsonl")
    assert items[0].prompt == "a"
    assert refused(tmp_path, "empty.txt", "", "text") == "empty.txt: no prompts in the list"


def test_seed_depends_on_base_seed_and_id_only():
    """The derived seed must not depend on position or rank, so a split list gets the same seeds."""
    assert item_seed(0, "a") == item_seed(0, "a")
    assert len({item_seed(0, "a"), item_seed(1, "a"), item_seed(0, "b")}) == 3
    assert all(0 <= item_seed(s, str(i)) < 2**48 for s in range(3) for i in range(50))
    # pinned: a change of the derivation would silently change every resumed list's images
    assert item_seed(0, "000001") == int.from_bytes(__import__("hashlib").sha256(b"0:000001").digest()[:6], "big")


class _S:
    def __init__(self, key):
        self.key = key

    def batch_key(self):
        return self.key


def test_batches_group_compatible_items_in_list_order_and_every_batch_goes_to_one_rank():
    from newbie_core.batch.plan import Job

    jobs = [Job(i, None, _S(k)) for i, k in enumerate("AABABAAC")]
    batches = make_batches(jobs, 2)
    assert [[j.index for j in b] for b in batches] == [[0, 1], [3, 5], [6], [2, 4], [7]]
    for world in (1, 2, 3):
        dealt = [b for r in range(world) for b in share(batches, r, world)]
        assert sorted(j.index for b in dealt for j in b) == list(range(8))


def test_switch_flags_take_true_or_false(tmp_path):
    from newbie_core.batch.prompts import FieldSpec

    fields = {**FIELDS, "allow_large": FieldSpec(bool)}
    path = tmp_path / "p.csv"
    path.write_text("prompt,allow_large\na,yes\nb,0\n")
    assert [i.overrides for i in read_prompt_list(path, fields)] == [{"allow_large": True}, {"allow_large": False}]
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "allow_large": true}\n{"prompt": "b", "allow_large": "true"}\n')
    with pytest.raises(PromptListError) as err:
        read_prompt_list(path, fields)
    assert str(err.value) == f"{path}:2: 'allow_large' must be true or false, got 'true'"
