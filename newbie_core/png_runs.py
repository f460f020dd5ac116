"""Runs recovered from PNGs: our CLI's ``newbie`` metadata, and ComfyUI PNGs whose graph used the pack's nodes.

The CLI writes every GenerationSettings field as JSON under the ``newbie`` text key. ComfyUI writes the API
prompt under ``prompt``; the run is read from its NewBie Sampler node and what feeds it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

CLI_KEY = "newbie"
SAMPLER_NODES = ("NewBieSampler",)
LATENT_NODES = ("NewBieEmptyLatent", "EmptySD3LatentImage", "EmptyLatentImage")


@dataclass
class Run:
    """The outputs of NewBie Load Run From Image (and what ``--from-png`` needs to know about a picture)."""

    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    cfg: float
    cfg_trunc: float
    renorm: float
    width: int
    height: int
    settings: dict  # every field we found, by GenerationSettings name


def read_png_text(path) -> tuple[dict[str, str], tuple[int, int]]:
    """The PNG's text chunks; ConfigError naming the file when it is missing or not a readable image."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        with Image.open(p) as img:
            img.load()
            return {k: v for k, v in img.info.items() if isinstance(v, str)}, img.size
    except (OSError, UnidentifiedImageError) as exc:
        raise ConfigError(f"{path}: cannot read it as an image ({exc})") from None


def cli_settings(path) -> dict:
    """The settings dict a PNG written by ``python -m newbie_core`` carries; ConfigError if it has none."""
    text, _ = read_png_text(path)
    raw = text.get(CLI_KEY)
    if raw is None:
        raise ConfigError(f"{path}: no NewBie metadata in this PNG (it was not written by python -m newbie_core)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: its NewBie metadata is not valid JSON ({exc.msg})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("prompt"), str):
        raise ConfigError(f"{path}: its NewBie metadata has no prompt")
    return meta


def read_run(path) -> Run:
    """A run from either kind of PNG (CLI metadata first, then a ComfyUI graph using NewBie Sampler)."""
    text, size = read_png_text(path)
    if CLI_KEY in text:
        meta = cli_settings(path)
        return _run_from_settings(meta)
    if "prompt" in text:
        try:
            graph = json.loads(text["prompt"])
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: its ComfyUI prompt metadata is not valid JSON ({exc.msg})") from None
        return run_from_comfy_prompt(graph, size, str(path))
    raise ConfigError(
        f"{path}: no NewBie run in this PNG (neither NewBie CLI metadata nor a ComfyUI workflow using NewBie Sampler)"
    )


def _run_from_settings(meta: dict) -> Run:
    return Run(
        prompt=meta["prompt"],
        negative_prompt=meta.get("negative_prompt", ""),
        seed=int(meta.get("seed", 0)),
        steps=int(meta.get("steps", 17)),
        cfg=float(meta.get("cfg", 5.0)),
        cfg_trunc=float(meta.get("cfg_trunc", 0.25)),
        renorm=float(meta.get("renorm", 0.0)),
        width=int(meta.get("width", 1024)),
        height=int(meta.get("height", 1024)),
        settings=meta,
    )


def _text_of(graph: dict, ref, where: str) -> str:
    """Follow a text input (a string, or a link to a node with a string ``text`` input) to its value."""
    seen = 0
    while isinstance(ref, list) and seen < 32:
        node = graph.get(str(ref[0]))
        if node is None:
            raise ConfigError(f"{where}: the prompt links to node {ref[0]}, which is not in the graph")
        inputs = node.get("inputs", {})
        ref = next((inputs[k] for k in ("text", "xml", "prompt", "string", "value") if k in inputs), None)
        if ref is None:
            raise ConfigError(f"{where}: cannot read the prompt text from node {node.get('class_type')!r}")
        seen += 1
    if not isinstance(ref, str):
        raise ConfigError(f"{where}: the prompt is not plain text")
    return ref


def _encoder_text(graph: dict, ref, where: str) -> str:
    node = graph.get(str(ref[0])) if isinstance(ref, list) else None
    if node is None:
        raise ConfigError(f"{where}: the sampler's conditioning does not come from a text encode node")
    inputs = node.get("inputs", {})
    if "text" not in inputs:
        # conditioning passed through another node (e.g. a combine); follow its first conditioning input
        link = next((v for v in inputs.values() if isinstance(v, list)), None)
        if link is None or link == ref:
            raise ConfigError(f"{where}: cannot find the prompt behind node {node.get('class_type')!r}")
        return _encoder_text(graph, link, where)
    return _text_of(graph, inputs["text"], where)


def run_from_comfy_prompt(graph: dict, image_size: tuple[int, int], where: str = "PNG") -> Run:
    """Read the run from a ComfyUI API prompt: the first NewBie Sampler, its conditionings and its latent."""
    samplers = [(k, v) for k, v in graph.items() if isinstance(v, dict) and v.get("class_type") in SAMPLER_NODES]
    if not samplers:
        raise ConfigError(f"{where}: its ComfyUI workflow has no NewBie Sampler node")
    _, sampler = min(samplers, key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 0)
    s = sampler["inputs"]
    prompt = _encoder_text(graph, s.get("positive"), where)
    negative = _encoder_text(graph, s.get("negative"), where)
    width, height = image_size
    latent = graph.get(str(s["latent_image"][0])) if isinstance(s.get("latent_image"), list) else None
    if latent is not None and latent.get("class_type") in LATENT_NODES:
        li = latent["inputs"]
        res = li.get("resolution")
        if isinstance(res, str) and res != "custom":
            width, height = (int(v) for v in res.split(" ")[0].split("x"))
        elif isinstance(li.get("width"), int) and isinstance(li.get("height"), int):
            width, height = li["width"], li["height"]

    def num(name, default, kind):
        v = s.get(name, default)
        return kind(v) if isinstance(v, (int, float)) else default

    settings = {
        "prompt": prompt,
        "negative_prompt": negative,
        "seed": num("seed", 0, int),
        "steps": num("steps", 17, int),
        "cfg": num("cfg", 5.0, float),
        "cfg_trunc": num("cfg_trunc", 0.25, float),
        "renorm": num("renorm", 0.0, float),
        "width": width,
        "height": height,
    }
    return _run_from_settings(settings)
