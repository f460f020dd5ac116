"""Ctrl-C says what is on disk (checked over many moments), and ``create`` survives its users."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from newbie_core import cli, image_files
from newbie_core.pipeline import NewBiePipeline

ROOT = Path(__file__).resolve().parents[1]

HARNESS = r"""
import io, json, os, signal, sys, threading, time
from pathlib import Path
from newbie_core import cli, image_files

real_write = image_files._write_new
mode = {"kill_in_write": False}

def slow_write(path, data):
    if mode["kill_in_write"]:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the file step
    time.sleep(0.3)
    real_write(path, data)

image_files._write_new = slow_write
root = Path(sys.argv[1])
results = []
for i, delay in enumerate(["in_write"] + [float(d) for d in sys.argv[2:]]):
    folder = root / f"run{i}"
    folder.mkdir()
    mode["kill_in_write"] = delay == "in_write"
    timer = None if delay == "in_write" else threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
    err = io.StringIO()
    try:
        if timer:
            timer.start()
        argv = ["generate", "--prompt", "x", "--steps", "3", "--width", "32", "--height", "32",
                "--output", str(folder / "x.png")]
        code = cli.main(argv, stdout=io.StringIO(), stderr=err)
        if timer:
            timer.cancel()
            timer.join()
        time.sleep(0.05)  # a signal sent just as main returned is raised here, inside the try
    except KeyboardInterrupt:
        code = "late"
    results.append({"delay": delay, "code": code, "err": err.getvalue(), "folder": str(folder)})
print(json.dumps(results))
"""


def test_ctrl_c_message_matches_the_files_at_every_moment(tmp_path):
    delays = ["0.0", "0.05", "0.3", "0.8", "1.5"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", HARNESS, str(tmp_path), *delays], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    said = []
    for r in results:
        folder = Path(r["folder"])
        files = sorted(os.listdir(folder))  # hidden temp files would show here
        target = folder / "x.png"
        assert "Traceback" not in r["err"], r
        if r["code"] == "late":
            continue
        last = r["err"].strip().splitlines()[-1] if r["err"].strip() else ""
        if r["code"] == 0:
            assert files == ["x.png"], r
            said.append("finished")
        elif last == f"interrupted; {target} had been written completely":
            assert r["code"] == 130 and files == ["x.png"], r
            Image.open(target).verify()  # complete, readable file
            said.append("written")
        else:
            assert r["code"] == 130, r
            assert last in (f"interrupted; nothing was written ({target} does not exist)",
                            "interrupted before any image was written"), r  # fmt: skip
            assert files == [], r
            said.append("nothing")
    assert said[0] == "written"  # Ctrl-C during the file step: the step finishes, and the message says so
    assert "nothing" in said  # early delays stop the run before anything is written


def test_idle_ctrl_c_in_create_says_goodbye(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "newbie_core", "create", "--output-dir", str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    seen = b""
    deadline = time.time() + 120
    while b"prompt> " not in seen and time.time() < deadline:
        seen += os.read(proc.stdout.fileno(), 4096)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    text = (seen + out).decode()
    assert proc.returncode == 0, err
    assert text.rstrip().endswith("bye") and "unfinished" not in text and "interrupted" not in text
    assert err == b""
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------ create


@pytest.mark.parametrize(
    "answer,expected",
    [
        ("foo.png", ("foo", ".png")),
        ("Foo.JPG", ("Foo", ".jpg")),
        ("shot.webp", ("shot", ".webp")),
        ("foo", ("foo", ".png")),
        ("猫の絵", ("猫の絵", ".png")),
        ("zoë café.jpeg", ("zoë_café", ".jpeg")),
        ("my pic", ("my_pic", ".png")),
        ("a/b\\c", ("a_b_c", ".png")),
        ("archive.tar", ("archive.tar", ".png")),
        ("", ("image", ".png")),
        ("...", ("image", ".png")),
        ("  .hidden ", ("hidden", ".png")),
    ],
)
def test_create_file_names(answer, expected):
    assert cli.file_name(answer) == expected


def test_create_keeps_the_prompt_after_a_bad_answer_and_survives_a_failed_write(tmp_path, monkeypatch):
    real_write = image_files._write_new

    def write(path, data):
        if "fail" in path.name:
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(image_files, "_write_new", write)
    script = "\n".join(
        ["1girl", "", "foo.png", "abc", "0", "1"]  # two bad step answers, then a good one: same prompt
        + ["cat", "", "猫の絵", "1"]
        + ["dog", "", "fail.png", "1"]  # the write fails; the session goes on
        + ["x", "", "my pic.jpg", ""]  # default steps
        + ["quit"]
    )
    code, out, err = run_create(tmp_path, script + "\n")
    assert code == 0, err
    (session,) = tmp_path.iterdir()
    assert sorted(os.listdir(session)) == ["foo.png", "my_pic.jpg", "猫の絵.png"]
    assert "steps must be a whole number from 1 to 1000, got 'abc'; please answer again (the prompt is kept)" in out
    assert "steps must be between 1 and 1000, got 0; please answer again (the prompt is kept)" in out
    assert f"error: cannot write {session / 'fail.png'}: No space left on device; the session goes on" in out
    assert json.loads(Image.open(session / "foo.png").info["newbie"])["prompt"] == "1girl"
    assert Image.open(session / "my_pic.jpg").format == "JPEG"
    assert out.rstrip().endswith("bye")


def test_ctrl_c_or_a_failure_during_a_create_image_goes_back_to_the_prompt(tmp_path, monkeypatch):
    real = NewBiePipeline.generate
    calls = []

    def generate(self, settings, progress=None):
        calls.append(settings.prompt)
        if len(calls) == 1:
            raise KeyboardInterrupt
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory")
        return real(self, settings, progress)

    monkeypatch.setattr(NewBiePipeline, "generate", generate)
    code, out, _ = run_create(tmp_path, "first\n\na\n1\nsecond\n\nb\n1\nthird\n\nc\n1\n")
    assert code == 0
    assert "interrupted; this image was not written; back to the prompt (Ctrl-C again to leave)" in out
    assert "error: RuntimeError: CUDA out of memory; the session goes on" in out
    (session,) = tmp_path.iterdir()
    assert os.listdir(session) == ["c.png"]
    assert calls == ["first", "second", "third"]


def run_create(tmp_path, stdin):
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(
        ["create", "--output-dir", str(tmp_path), "--steps", "1", "--width", "32", "--height", "32"],
        stdin=io.StringIO(stdin),
        stdout=out,
        stderr=err,
    )
    return code, out.getvalue(), err.getvalue()
