"""The example workflows, run by a real ComfyUI server (CPU) with tiny random weights under the released names."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import COMFYUI_PATH, PACK_ROOT
from model_files import stock_vae_width, write_tiny_models

WORKFLOWS = sorted((PACK_ROOT / "example_workflows").glob("*.json"))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
INPUT_IMAGE = "newbie_test_input.png"


def write_input_image(path: Path) -> None:
    """64x64 RGBA picture for LoadImage; a transparent square is the inpaint mask (LoadImage's MASK = 1 - alpha)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:64, 0:64]
    arr = np.stack([x * 4, y * 4, (x + y) * 2, np.full_like(x, 255)], -1).astype(np.uint8)
    arr[16:40, 20:44, 3] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGBA").save(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
        return json.loads(r.read())


def _post(url, payload):
    req = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - loopback only
        body = r.read()
    return json.loads(body) if body.strip() else {}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base")
    models = base / "models"
    write_tiny_models(models, vae_width=stock_vae_width(), vae_encoder=True)
    # the workflows name the released files; the tiny ones stand in for them
    renames = {
        "diffusion_models/NewBie-tiny.safetensors": "diffusion_models/NewBie-Image-Exp0.1-bf16.safetensors",
        "text_encoders/gemma_tiny.safetensors": "text_encoders/gemma_3_4b_it_bf16.safetensors",
        "text_encoders/jina_tiny.safetensors": "text_encoders/jina_clip_v2_bf16.safetensors",
        "vae/ae_tiny.safetensors": "vae/ae.safetensors",
        "loras/newbie_tiny_lora.safetensors": "loras/newbie_style_lora.safetensors",
    }
    for a, b in renames.items():
        (models / a).rename(models / b)
    write_input_image(base / "input" / INPUT_IMAGE)
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "newbie_nodes").symlink_to(PACK_ROOT, target_is_directory=True)
    port = _free_port()
    log = open(base / "server.log", "w")  # noqa: SIM115
    env = {**os.environ, "PYTHONPATH": ""}
    cmd = [
        sys.executable,
        "main.py",
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--base-directory",
        str(base),
    ]
    if "--database-url" in (Path(COMFYUI_PATH) / "comfy" / "cli_args.py").read_text():
        cmd += ["--database-url", "sqlite:///:memory:"]  # newer cores keep a database; keep it out of the checkout
    proc = subprocess.Popen(cmd, cwd=COMFYUI_PATH, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            info = _get(url + "/object_info")
            break
        except (urllib.error.URLError, ConnectionError, OSError):
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail("ComfyUI did not start:\n" + (base / "server.log").read_text()[-4000:])
            time.sleep(1)
    yield {"url": url, "info": info, "base": base}
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    shutil.rmtree(base / "output", ignore_errors=True)


def to_api(workflow: dict, info: dict, overrides: dict | None = None) -> dict:
    """UI-format workflow -> API prompt, as the frontend does it (widgets in schema order, links as [id, slot])."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) == 2:  # muted
            continue
        spec = info[node["type"]]
        order = spec.get("input_order") or {k: list(v) for k, v in spec["input"].items()}
        inputs = {}
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values", []))
        for section in ("required", "optional"):
            for name in order.get(section, []):
                typ, *rest = spec["input"][section][name]
                opts = rest[0] if rest else {}
                is_widget = (isinstance(typ, list) or typ in WIDGET_TYPES) and not opts.get("forceInput")
                if is_widget and values:
                    value = values.pop(0)
                    if opts.get("control_after_generate") and values:
                        values.pop(0)
                    inputs[name] = value
                if name in linked:
                    link = linked[name]
                    inputs[name] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs, "_mode": node.get("mode", 0)}
    for key, changes in (overrides or {}).items():
        prompt[key]["inputs"].update(changes)
    # bypassed nodes (mode 4) pass their first input of the same type straight through
    for key, node in list(prompt.items()):
        if node.pop("_mode") == 4:
            source = next(v for v in node["inputs"].values() if isinstance(v, list))
            for other in prompt.values():
                for name, v in other["inputs"].items():
                    if isinstance(v, list) and v[0] == key:
                        other["inputs"][name] = source
            del prompt[key]
    return prompt


def run_prompt(server, prompt, timeout=600):
    pid = _post(server["url"] + "/prompt", {"prompt": prompt})["prompt_id"]
    deadline = time.time() + timeout
    while time.time() < deadline:
        hist = _get(server["url"] + f"/history/{pid}")
        if (
            pid in hist
            and hist[pid].get("status", {}).get("completed") is not None
            or (pid in hist and hist[pid].get("status", {}).get("status_str") == "error")
        ):
            return hist[pid]
        time.sleep(0.5)
    pytest.fail("workflow did not finish in time")


def small(workflow: dict) -> dict:
    """Tiny sizes and few steps so a CPU runs each graph in seconds."""
    out = {}
    for node in workflow["nodes"]:
        t, k = node["type"], str(node["id"])
        if t == "NewBieEmptyLatent":
            out[k] = {"resolution": "custom", "width": 64, "height": 64}
        elif t == "EmptySD3LatentImage":
            out[k] = {"width": 64, "height": 64}
        elif t in ("NewBieSampler", "KSampler", "NewBieHiresFix"):
            out[k] = {"steps": 2}
        elif t == "LoadImage":
            out[k] = {"image": INPUT_IMAGE}
    return out


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflow_runs_end_to_end(server, path):
    workflow = json.loads(path.read_text(encoding="utf-8"))
    assert {m["directory"] for m in workflow["models"]} == {"diffusion_models", "text_encoders", "vae"}
    prompt = to_api(workflow, server["info"], small(workflow))
    result = run_prompt(server, prompt)
    assert result["status"]["status_str"] == "success", json.dumps(result["status"], indent=1)[-3000:]
    images = [img for out in result["outputs"].values() for img in out.get("images", [])]
    assert images and all((server["base"] / "output" / i["subfolder"] / i["filename"]).is_file() for i in images)


def test_stock_workflow_with_lora_enabled(server):
    path = PACK_ROOT / "example_workflows" / "newbie_with_stock_nodes.json"
    workflow = json.loads(path.read_text(encoding="utf-8"))
    for node in workflow["nodes"]:
        if node["type"] == "LoraLoaderModelOnly":
            node["mode"] = 0
    result = run_prompt(server, to_api(workflow, server["info"], small(workflow)))
    assert result["status"]["status_str"] == "success", json.dumps(result["status"], indent=1)[-3000:]


def test_malformed_xml_is_rejected_before_execution(server):
    workflow = json.loads((PACK_ROOT / "example_workflows" / "newbie_text_to_image.json").read_text(encoding="utf-8"))
    prompt = to_api(workflow, server["info"], small(workflow))
    xml_node = next(k for k, v in prompt.items() if v["class_type"] == "NewBieXMLPrompt")
    prompt[xml_node]["inputs"]["text"] = "<character_1>\n<n>a</n>\n<gender>1girl</appearance>\n</character_1>"
    try:
        _post(server["url"] + "/prompt", {"prompt": prompt})
        pytest.fail("the server accepted a malformed XML prompt")
    except urllib.error.HTTPError as err:
        body = json.loads(err.read())
    messages = json.dumps(body)
    assert "line 3, column 14: </appearance> closes <gender>, which was opened at line 3, column 1" in messages


def test_interrupt_mid_sampling_leaves_no_output(server):
    workflow = json.loads((PACK_ROOT / "example_workflows" / "newbie_text_to_image.json").read_text(encoding="utf-8"))
    overrides = small(workflow)
    sampler = next(str(n["id"]) for n in workflow["nodes"] if n["type"] == "NewBieSampler")
    save = next(str(n["id"]) for n in workflow["nodes"] if n["type"] == "SaveImage")
    overrides[sampler] = {"steps": 1000, "seed": 12345}
    overrides[save] = {"filename_prefix": "interrupted_run"}
    pid = _post(server["url"] + "/prompt", {"prompt": to_api(workflow, server["info"], overrides)})["prompt_id"]
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until the sampler is running
        running = _get(server["url"] + "/queue")["queue_running"]
        if running and running[0][1] == pid:
            time.sleep(2.0)
            break
        time.sleep(0.2)
    _post(server["url"] + "/interrupt", {})
    result = None
    deadline = time.time() + 120
    while time.time() < deadline:
        hist = _get(server["url"] + f"/history/{pid}")
        if pid in hist:
            result = hist[pid]
            break
        time.sleep(0.5)
    assert result is not None and result["status"]["status_str"] == "error"
    assert any(m[0] == "execution_interrupted" for m in result["status"]["messages"])
    assert not list((server["base"] / "output").glob("interrupted_run*"))


def _outputs(server, result):
    return [
        server["base"] / "output" / i["subfolder"] / i["filename"]
        for o in result["outputs"].values()
        for i in o.get("images", [])
    ]


def test_image_to_image_workflows_keep_the_input_size_and_hires_doubles_it(server):
    from PIL import Image

    sizes = {}
    for name in ("newbie_img2img", "newbie_inpaint", "newbie_hires"):
        workflow = json.loads((PACK_ROOT / "example_workflows" / f"{name}.json").read_text(encoding="utf-8"))
        result = run_prompt(server, to_api(workflow, server["info"], small(workflow)))
        assert result["status"]["status_str"] == "success", json.dumps(result["status"], indent=1)[-3000:]
        (path,) = _outputs(server, result)
        sizes[name] = Image.open(path).size
        if name == "newbie_inpaint":  # the paste-back: outside the grown mask the input's pixels, exactly
            out = Image.open(path).convert("RGB")
            src = Image.open(server["base"] / "input" / INPUT_IMAGE).convert("RGB")
            assert out.getpixel((2, 2)) == src.getpixel((2, 2)) and out.getpixel((60, 60)) == src.getpixel((60, 60))
            assert out.getpixel((30, 28)) != src.getpixel((30, 28))
        if name == "newbie_hires":  # and the run reads back from the real ComfyUI PNG
            from newbie_core.png_runs import read_run

            run = read_run(path)
            sampler = next(n for n in workflow["nodes"] if n["type"] == "NewBieSampler")
            assert (run.steps, run.width, run.height) == (2, 64, 64)
            assert run.cfg == sampler["widgets_values"][3] and run.prompt.startswith("<character_1>")
    assert sizes == {"newbie_img2img": (64, 64), "newbie_inpaint": (64, 64), "newbie_hires": (128, 128)}


def test_prompt_writer_feeds_the_encoder_in_a_served_graph(server):
    """The writer node between the loader and NewBie Text Encode, executed by the server; the XML it wrote parses."""
    from newbie_core.xml_prompt import parse

    path = PACK_ROOT / "example_workflows" / "newbie_text_to_image.json"
    workflow = json.loads(path.read_text(encoding="utf-8"))
    prompt = to_api(workflow, server["info"], small(workflow))
    loader = next(k for k, v in prompt.items() if v["class_type"] == "NewBieTextEncoderLoader")
    encode = next(k for k, v in prompt.items() if v["class_type"] == "NewBieTextEncode" and "text" in v["inputs"])
    prompt["900"] = {
        "class_type": "NewBiePromptWriter",
        "inputs": dict(
            clip=[loader, 0], text="two girls having tea", seed=5, max_new_tokens=96, temperature=0.7, top_p=0.95
        ),
    }
    prompt["901"] = {"class_type": "PreviewAny", "inputs": {"source": ["900", 0]}}
    prompt[encode]["inputs"]["text"] = ["900", 0]
    result = run_prompt(server, prompt)
    assert result["status"]["status_str"] == "success", json.dumps(result["status"], indent=1)[-3000:]
    (xml,) = result["outputs"]["901"]["text"]
    parsed = parse(xml)
    assert parsed.is_xml and parsed.warnings == [] and parsed.general_tags
    assert any(out.get("images") for out in result["outputs"].values())


FRONTEND_CHECK = PACK_ROOT / "tests" / "web" / "frontend_check.mjs"


def _frontend_tools_missing() -> str | None:
    if not shutil.which("node"):
        return "node is not installed"
    if not Path(os.environ.get("CHROMIUM", "/usr/bin/chromium")).exists():
        return "no Chromium (set CHROMIUM or install /usr/bin/chromium)"
    if not (PACK_ROOT / "tests" / "web" / "node_modules" / "playwright-core").is_dir():
        return "run `npm ci` in tests/web first"
    return None


def test_real_frontend_draws_the_pinned_widgets_the_translated_names_and_no_overlaps(server):
    """ComfyUI's own frontend, headless: widget order equals the golden file's widgets_values, nodes show their zh and
    ja display names, and no two nodes of any example workflow overlap as the frontend sizes them."""
    missing = _frontend_tools_missing()
    if missing:
        pytest.skip(f"frontend check needs a browser: {missing}")
    from node_interface import CONTROL, load_golden
    from test_workflow_layout import overlapping_pairs

    proc = subprocess.run(
        ["node", str(FRONTEND_CHECK), server["url"], str(PACK_ROOT)],
        cwd=FRONTEND_CHECK.parent,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout)
    assert seen["errors"] == []
    golden = load_golden()["nodes"]
    locales = {
        lang: json.loads((PACK_ROOT / "locales" / lang / "nodeDefs.json").read_text(encoding="utf-8"))
        for lang in ("zh", "ja")
    }
    for node_id, node in golden.items():
        expected = [CONTROL if w.endswith(":" + CONTROL) else w for w in node["widgets_values"]]
        # frontend-only widgets, never saved: the image combo's upload button and the region drawing canvas
        drawn = [w for w in seen["widgets"][node_id] if not w.startswith("$$") and w not in ("upload", "region_canvas")]
        assert drawn == expected, node_id
        for lang, defs in locales.items():
            assert seen["titles"][lang][node_id] == defs[node_id]["display_name"], (lang, node_id)
    for name, nodes in seen["workflows"].items():
        assert not overlapping_pairs({"nodes": nodes}), (name, overlapping_pairs({"nodes": nodes}))
