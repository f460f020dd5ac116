"""`batch` end to end on the embedded tiny model: batched forward, resume after SIGKILL, torchrun on CPU (gloo)."""

from __future__ import annotations

import collections
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from newbie_core.batch import run as batch_run
from newbie_core.batch import store
from newbie_core.batch.manifest import Manifest
from newbie_core.cli import main
from newbie_core.errors import ConfigError
from newbie_core.pipeline import GenerationSettings, NewBiePipeline

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

LIST = [
    {"prompt": "1girl, smile", "id": "girl"},
    {"prompt": "a cat on a sofa, many many words", "negative": "blurry, lowres"},
    {"prompt": "<character_1><n>rem</n><gender>1girl</gender></character_1>", "width": 48},
    {"prompt": "x", "seed": 7},
    {"prompt": "sunset", "negative": "people"},
]
ARGS = ["--steps", "1", "--batch-size", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def pipe():
    return NewBiePipeline.tiny()


def write_list(tmp_path, items=LIST, name="list.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(["batch", *argv], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def manifest_lines(folder: Path) -> list[dict]:
    lines = []
    for raw in (folder / "manifest.jsonl").read_bytes().split(b"\n"):
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue  # torn line of a killed writer (sealed by the next append)
    return lines


def assert_complete(folder: Path, ids: list[str]) -> None:
    """Every id exactly once in the manifest, every PNG whole and equal to its recorded hash, no part files."""
    lines = manifest_lines(folder)
    assert collections.Counter(e["id"] for e in lines) == collections.Counter(ids)
    for e in lines:
        data = (folder / e["file"]).read_bytes()
        assert store.sha256_bytes(data) == e["sha256"] and len(data) == e["bytes"]
        with Image.open(folder / e["file"]) as im:
            im.load()  # raises on a truncated file
    assert sorted(p.name for p in folder.glob("*.png")) == sorted(f"{i}.png" for i in ids)
    assert not [p for p in folder.iterdir() if p.name.endswith(".part")]


def pixels(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


IDS = ["girl", "000002", "000003", "000004", "000005"]


# ------------------------------------------------------------------------------ the batched forward


def test_one_forward_over_different_prompts_negatives_and_seeds_equals_single_runs(pipe, monkeypatch):
    items = [
        GenerationSettings(prompt=p, negative_prompt=n, seed=s, width=64, height=64, steps=2)
        for p, n, s in [("1girl, smile", "", 3), ("a long prompt about a cat on a sofa", "blurry", 11), ("x", "bad", 5)]
    ]
    calls = []
    forward = pipe.transformer.forward
    monkeypatch.setattr(pipe.transformer, "forward", lambda x, *a, **k: calls.append(x.shape[0]) or forward(x, *a, **k))
    batch = pipe.generate(items[0], items=items)
    assert calls == [6, 6, 6, 3]  # t = 0, 0.07, 0.14 are under cfg_trunc 0.25: cond+uncond of 3 items; then cond only
    monkeypatch.undo()
    for i, s in enumerate(items):
        one = pipe.generate(s)
        assert torch.allclose(batch.latents[i : i + 1], one.latents, atol=1e-5, rtol=0)
        diff = np.abs(np.asarray(batch.images[i], dtype=int) - np.asarray(one.images[0], dtype=int))
        assert diff.max() <= 1  # float rounding of the larger matmuls only


def test_batch_items_must_share_everything_but_prompt_negative_and_seed(pipe):
    a = GenerationSettings(prompt="a", width=64, height=64, steps=1)
    with pytest.raises(ConfigError, match="batch item 2 differs from the batch in more than prompt, negative and seed"):
        pipe.generate(a, items=[a, GenerationSettings(prompt="b", width=48, height=64, steps=1)])


# ------------------------------------------------------------------------------ the command


def test_batch_writes_every_item_with_metadata_and_a_rerun_skips_without_loading(tmp_path, monkeypatch):
    out = tmp_path / "out"
    code, stdout, err = run([str(write_list(tmp_path)), "--out", str(out), *ARGS])
    assert code == 0, err
    assert_complete(out, IDS)
    lines = {e["id"]: e for e in manifest_lines(out)}
    assert lines["000003"]["settings"]["width"] == 48 and lines["000004"]["seed"] == 7
    assert lines["000002"]["settings"]["negative_prompt"] == "blurry, lowres"
    # 64x64 items in list order, two per forward; the 48-wide one alone
    assert {k: e["batch"] for k, e in lines.items()} == {
        "girl": ["girl", "000002"],
        "000002": ["girl", "000002"],
        "000004": ["000004", "000005"],
        "000005": ["000004", "000005"],
        "000003": ["000003"],
    }
    with Image.open(out / "000002.png") as im:
        meta = json.loads(im.text["newbie"])
        assert meta["prompt"] == LIST[1]["prompt"] and meta["seed"] == lines["000002"]["seed"]
        assert json.loads(im.text["newbie_batch"]) == {"id": "000002", "line": 2, "list": "list.jsonl"}
    assert "summary: done 5, skipped 0 (already done), failed 0;" in stdout

    monkeypatch.setattr(batch_run, "_load", lambda *a: pytest.fail("models loaded although everything was done"))
    code, stdout, _ = run([str(write_list(tmp_path)), "--out", str(out), *ARGS])
    assert code == 0 and "summary: done 0, skipped 5 (already done), failed 0;" in stdout
    assert_complete(out, IDS)


def test_rerun_with_changed_settings_or_model_is_refused_naming_the_line(tmp_path, monkeypatch):
    out = tmp_path / "out"
    items = LIST[:1]
    assert run([str(write_list(tmp_path, items)), "--out", str(out), *ARGS])[0] == 0
    before = (out / "manifest.jsonl").read_bytes()
    monkeypatch.setattr(batch_run, "_load", lambda *a: pytest.fail("models loaded before the list was refused"))
    code, _, err = run([str(write_list(tmp_path, items)), "--out", str(out), *ARGS, "--cfg", "3"])
    assert code == 2
    assert err.strip() == (
        f"error: {tmp_path}/list.jsonl:1: id 'girl' is already in {out}/manifest.jsonl with other settings (cfg); "
        "use another --out, or delete that id's line from the manifest to redo it"
    )
    assert (out / "manifest.jsonl").read_bytes() == before


def test_bad_lists_and_flags_are_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(batch_run, "_load", lambda *a: pytest.fail("models loaded for a bad list"))
    out = tmp_path / "out"
    cases = [
        (
            [{"prompt": "a"}, {"prompt": "b", "width": 100}],
            [],
            "list.jsonl:2: 'width' must be a positive multiple of 16, got 100",
        ),
        ([{"prompt": "a"}, {"prompt": "<character_1>oops"}], [], "list.jsonl:2: prompt line 1, column"),
        ([{"prompt": "a", "shift": 0}], [], "list.jsonl:1: 'shift' must be between 0.01 and 100, got 0"),
        ([{"prompt": "a"}], ["--batch-size", "0"], "error: --batch-size must be at least 1, got 0"),
        ([{"prompt": "a"}], ["--cfg", "nan"], "error: --cfg must be a finite number, got nan"),
        (
            [{"prompt": "a", "id": "q"}, {"prompt": "b", "id": "q"}],
            [],
            "list.jsonl:2: duplicate id 'q' (first on line 1)",
        ),
        (
            [{"prompt": "a"}],
            ["--models-dir", str(tmp_path / "nowhere")],
            f"error: --models-dir {tmp_path}/nowhere: no such folder",
        ),
    ]
    for items, extra, message in cases:
        code, _, err = run([str(write_list(tmp_path, items)), "--out", str(out), "--steps", "1", *extra])
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert not out.exists()


def test_foreign_file_in_the_way_is_refused_and_a_changed_file_is_made_again(tmp_path):
    out = tmp_path / "out"
    items = LIST[:2]
    out.mkdir()
    (out / "girl.png").write_bytes(b"not ours")
    code, _, err = run([str(write_list(tmp_path, items)), "--out", str(out), *ARGS])
    assert (
        code == 2
        and f"error: {out}/girl.png exists but is not in manifest.jsonl and was not written by newbie batch" in err
    )
    (out / "girl.png").unlink()
    assert run([str(write_list(tmp_path, items)), "--out", str(out), *ARGS])[0] == 0
    good = (out / "000002.png").read_bytes()
    (out / "000002.png").write_bytes(good[:-20])  # damaged after it was recorded
    code, stdout, err = run([str(write_list(tmp_path, items)), "--out", str(out), *ARGS])
    assert code == 0 and "000002: recorded in the manifest but its file is missing or changed; making it again" in err
    assert "done 1, skipped 1" in stdout
    assert (out / "000002.png").read_bytes() == good  # same batch as before -> the same bytes
    latest = {e["id"]: e for e in manifest_lines(out)}
    assert latest["000002"]["sha256"] == store.sha256_bytes(good)


@pytest.mark.parametrize("point", ["after-record", "mid-write", "mid-record"])
def test_sigkill_during_a_batch_then_rerun_gives_every_id_once_and_whole(tmp_path, point):
    out = tmp_path / "out"
    args = [str(write_list(tmp_path)), "--out", str(out), "--steps", "1", "--batch-size", "1", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run(
        [sys.executable, str(TESTS / "batch_kill_runner.py"), point, *args], env=env, capture_output=True, timeout=300
    )
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    recorded = [e["id"] for e in manifest_lines(out)]
    assert recorded == (["girl"] if point == "after-record" else [])
    if point == "mid-write":
        assert [p.name for p in out.glob(".*.part")] and not list(out.glob("*.png"))
    if point == "mid-record":
        assert (out / "girl.png").exists() and not (out / "manifest.jsonl").read_bytes().endswith(b"\n")

    code, stdout, err = run(args)
    assert code == 0, err
    assert_complete(out, IDS)
    assert f"done {4 if point == 'after-record' else 5}, skipped {1 if point == 'after-record' else 0}" in stdout


def test_two_torchrun_processes_on_cpu_make_the_same_pixels_as_one(tmp_path):
    """gloo, 2 ranks: every id exactly once, work on both ranks, bitwise the images of one process."""
    listing = write_list(tmp_path, [*LIST, {"prompt": "six"}, {"prompt": "seven", "width": 48}])
    ids = [*IDS, "000006", "000007"]
    two = tmp_path / "two"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, "-m", "newbie_core", "batch", str(listing), "--out", str(two), *ARGS],
        env=env,
        capture_output=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert_complete(two, ids)
    assert {e["rank"] for e in manifest_lines(two)} == {0, 1}
    assert b"summary: done 7, skipped 0 (already done), failed 0;" in proc.stdout

    one = tmp_path / "one"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # torchrun gives each rank one thread; CPU matmuls round by thread count
    try:
        assert run([str(listing), "--out", str(one), *ARGS])[0] == 0
    finally:
        torch.set_num_threads(threads)
    a, b = pixels(one), pixels(two)
    assert a.keys() == b.keys() == set(ids)
    for k in ids:
        assert np.array_equal(a[k], b[k]), k
    for key in ("seed", "batch"):  # batches are cut before the split: the same neighbours in both runs
        assert {e["id"]: e[key] for e in manifest_lines(one)} == {e["id"]: e[key] for e in manifest_lines(two)}


# ------------------------------------------------------------------------------ the pieces


def test_manifest_seals_a_torn_line_and_concurrent_writers_lines_arrive_whole(tmp_path):
    m = Manifest(tmp_path)
    with m.locked():
        m.append({"id": "a", "n": 1})
    os.write(m.fd, b'{"id": "b", "tor')  # a writer killed mid-line
    m.close()
    m = Manifest(tmp_path)
    assert set(m.entries) == {"a"}
    with m.locked():
        m.append({"id": "c"})
    assert (tmp_path / "manifest.jsonl").read_bytes().endswith(b'{"id": "b", "tor\n{"id": "c"}\n')
    m.close()

    script = (
        "import sys; from pathlib import Path; from newbie_core.batch.manifest import Manifest\n"
        "m = Manifest(Path(sys.argv[1]))\n"
        "for i in range(150):\n"
        "    with m.locked(): m.append({'id': f'{sys.argv[2]}{i}', 'pad': 'x' * 5000})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), p], env=env) for p in "PQ"]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    m = Manifest(tmp_path)
    assert len(m.entries) == 2 + 300 and m.torn_lines == 1
    m.close()


def test_manifest_lock_excludes_other_processes(tmp_path):
    """While one process holds the lock (checking, renaming, appending), another cannot even read the manifest."""
    script = (
        "import sys; from pathlib import Path; from newbie_core.batch.manifest import Manifest\n"
        "print('ready', flush=True)\n"
        "m = Manifest(Path(sys.argv[1]))\n"
        "with m.locked(): m.append({'id': 'other'})\n"
    )
    m = Manifest(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with m.locked():
        proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], env=env, stdout=subprocess.PIPE)
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(1.0)
        assert m.size() == 0 and proc.poll() is None  # blocked on the lock
    assert proc.wait(timeout=60) == 0
    with m.locked():
        m.refresh()
    assert set(m.entries) == {"other"}
    m.close()


def test_part_files_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    host = store._host()
    stale = tmp_path / f".a.{host}.{pid}.part"
    live = tmp_path / f".b.{host}.{os.getppid()}.part"
    other_host = tmp_path / f".c.otherhost.{pid}.part"
    for p in (stale, live, other_host):
        p.write_bytes(b"x")
    assert store.remove_dead_parts(tmp_path) == 1
    assert not stale.exists() and live.exists() and other_host.exists()


def test_ranks_come_from_the_launcher_environment():
    from newbie_core.batch.distributed import Ranks, pick_device, ranks_from_env

    assert ranks_from_env({}) == Ranks(0, 1, 0, 1)
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    assert ranks_from_env(env) == Ranks(3, 4, 1, 1)
    assert ranks_from_env({**env, "LOCAL_WORLD_SIZE": "2"}) == Ranks(3, 4, 1, 2)
    for bad, message in [
        ({**env, "RANK": "4"}, "RANK=4 is outside 0..3 (WORLD_SIZE=4)"),
        ({**env, "RANK": "x"}, "environment variable RANK='x' is not a whole number"),
        (
            {"WORLD_SIZE": "2", "RANK": "0"},
            "WORLD_SIZE=2 but MASTER_ADDR is not set; start with torchrun or accelerate launch",
        ),
        (
            {"OMPI_COMM_WORLD_SIZE": "2"},
            "started as 2 MPI processes (OMPI_COMM_WORLD_SIZE) without torch.distributed's RANK/WORLD_SIZE; "
            "start with torchrun, or accelerate launch --multi_gpu",
        ),
    ]:
        with pytest.raises(ConfigError) as err:
            ranks_from_env(bad)
        assert str(err.value) == message
    assert pick_device("cpu", Ranks(1, 2, 1)) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="asked for CUDA, but torch sees no CUDA GPU"):
            pick_device("cuda", Ranks())


def test_an_id_recorded_by_another_process_meanwhile_is_kept_not_duplicated(tmp_path):
    """Two runs on one folder at once (a mistake, but possible): the later finisher drops its copy."""
    from newbie_core.batch.plan import Job
    from newbie_core.batch.prompts import PromptItem
    from newbie_core.pipeline import GenerationResult

    settings = GenerationSettings(prompt="a", width=16, height=16)
    image = Image.new("RGB", (16, 16), (10, 20, 30))
    result = GenerationResult([image], torch.zeros(1, 16, 2, 2), settings, "label")
    job = Job(0, PromptItem(1, "a", "a"), settings)
    mine = Manifest(tmp_path)
    writer = batch_run._Writer(tmp_path, mine, Path("list.txt"), batch_run.Ranks())
    other = Manifest(tmp_path)
    with other.locked():
        other.append({"id": "a", "file": "a.png", "sha256": "theirs"})
    (tmp_path / "a.png").write_bytes(b"theirs")
    assert writer.write(job, result, 0, 1.0, [job]) is False
    assert (tmp_path / "a.png").read_bytes() == b"theirs"
    assert [e["id"] for e in manifest_lines(tmp_path)] == ["a"]
    assert not list(tmp_path.glob(".*.part"))
    assert writer.write(Job(1, PromptItem(2, "b", "b"), settings), result, 0, 1.0, [job]) is True
    assert [e["id"] for e in manifest_lines(tmp_path)] == ["a", "b"]
    mine.close()
    other.close()


def test_text_and_csv_lists_end_to_end(tmp_path):
    text = tmp_path / "list.txt"
    text.write_text("1girl, smile\n\nsunset over the sea\n")
    code, stdout, err = run([str(text), "--out", str(tmp_path / "t"), *ARGS])
    assert code == 0, err
    assert_complete(tmp_path / "t", ["000001", "000003"])
    assert {e["id"]: e["settings"]["prompt"] for e in manifest_lines(tmp_path / "t")} == {
        "000001": "1girl, smile",
        "000003": "sunset over the sea",
    }

    table = tmp_path / "list.csv"
    table.write_text('id,prompt,negative,steps,width\nwide,"a cat, on a sofa",blurry,2,96\nplain,x,,,\n')
    code, stdout, err = run([str(table), "--out", str(tmp_path / "c"), *ARGS, "--negative", "lowres"])
    assert code == 0, err
    assert_complete(tmp_path / "c", ["wide", "plain"])
    got = {e["id"]: e["settings"] for e in manifest_lines(tmp_path / "c")}
    assert (got["wide"]["negative_prompt"], got["wide"]["steps"], got["wide"]["width"]) == ("blurry", 2, 96)
    assert (got["plain"]["negative_prompt"], got["plain"]["steps"], got["plain"]["width"]) == ("lowres", 1, 64)
    with Image.open(tmp_path / "c" / "wide.png") as im:
        assert im.size == (96, 64)


def test_a_failing_batch_is_reported_with_its_reason_and_the_rest_still_runs(tmp_path, monkeypatch):
    generate = NewBiePipeline.generate

    def flaky(self, settings, progress=None, items=None):
        if any(s.prompt == "x" for s in items):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return generate(self, settings, progress, items)

    monkeypatch.setattr(NewBiePipeline, "generate", flaky)
    out = tmp_path / "out"
    code, stdout, err = run([str(write_list(tmp_path)), "--out", str(out), *ARGS])
    assert code == 1
    assert "summary: done 3, skipped 0 (already done), failed 2;" in stdout
    assert (
        f"  failed 000004 ({tmp_path}/list.jsonl:4): CUDA out of memory. Tried to allocate 2.00 GiB "
        "(batch of 2: rerun with a smaller --batch-size, or --low-vram)"
    ) in err
    assert_complete(out, ["girl", "000002", "000003"])
    monkeypatch.undo()
    code, stdout, _ = run([str(write_list(tmp_path)), "--out", str(out), *ARGS])
    assert code == 0 and "summary: done 2, skipped 3 (already done), failed 0;" in stdout
    assert_complete(out, IDS)


def test_lora_is_applied_recorded_and_a_rerun_without_it_is_refused(tmp_path):
    from test_pipeline_cli import tiny_lora

    lora = tiny_lora(tmp_path / "style.safetensors")
    out = tmp_path / "out"
    listing = write_list(tmp_path, LIST[:2])
    code, _, err = run([str(listing), "--out", str(out), *ARGS, "--lora", f"{lora}:0.5"])
    assert code == 0, err
    assert "style.safetensors: PEFT lora_A/lora_B, base_model.model names; 1 modules applied" in err
    assert [e["lora"] for e in manifest_lines(out)] == [[["style.safetensors", 0.5]]] * 2
    with Image.open(out / "girl.png") as im:
        assert json.loads(im.text["newbie"])["loras"] == "style.safetensors:0.5"
    code, _, err = run([str(listing), "--out", str(out), *ARGS])
    assert code == 2
    assert err.strip() == (
        f"error: {listing}:1: id 'girl' in {out}/manifest.jsonl was made with LoRAs [['style.safetensors', 0.5]], "
        "this run has []; use another --out"
    )
    code, _, err = run([str(listing), "--out", str(tmp_path / "o2"), *ARGS, "--lora", f"{tmp_path}/none.safetensors"])
    assert code == 2 and err.strip() == (
        f"error: --lora {tmp_path}/none.safetensors: {tmp_path}/none.safetensors: file not found"
    )
