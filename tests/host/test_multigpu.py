"""Core's multi-GPU nodes (MultiGPU CFG Split, Select Model Device; core >= 0.23) with our MODEL, on a CPU host.

A CPU host has one device, so the CFG split is shown on two CPU device objects (``cpu`` and ``cpu:0``
are different devices to ComfyUI): core deep-clones our model through the loader's recorded factory,
runs the conditional and unconditional halves on the two copies in its worker threads, and the
result must equal the plain run.
"""

from __future__ import annotations

import pytest
import torch
from model_files import write_tiny_models


@pytest.fixture()
def tiny(models_dir):
    return write_tiny_models(models_dir)


@pytest.fixture(scope="module")
def multigpu_nodes(comfy):
    from comfy_extras import nodes_multigpu

    nodes = {
        cls.define_schema().node_id: cls
        for cls in (nodes_multigpu.MultiGPUCFGSplitNode, nodes_multigpu.SelectModelDeviceNode)
    }
    assert {k: v.define_schema().display_name for k, v in nodes.items()} == {
        "MultiGPU_WorkUnits": "MultiGPU CFG Split",
        "SelectModelDevice": "Select Model Device",
    }
    return nodes


def _sample(node_classes, model, clip):
    pos = node_classes["NewBieTextEncode"].execute(clip, "1girl, smile", "auto", "").result[0]
    neg = node_classes["NewBieTextEncode"].execute(clip, "lowres", "auto", "").result[0]
    latent = node_classes["NewBieEmptyLatent"].execute("custom", 64, 64, 1).result[0]
    out = node_classes["NewBieSampler"].execute(
        model, pos, neg, latent, 7, 3, 5.0, 1.0, 0.0, "newbie_midpoint", "newbie_official"
    )
    return out.result[0]["samples"]


def _clip(node_classes):
    loader = node_classes["NewBieTextEncoderLoader"]
    return loader.execute("gemma_tiny.safetensors", "jina_tiny.safetensors", "fp32", "cpu").result[0]


def test_select_model_device_and_cfg_split_accept_our_model(node_classes, multigpu_nodes, tiny, comfy):
    model = node_classes["NewBieDiTLoader"].execute("NewBie-tiny.safetensors", "fp32").result[0]
    clip = _clip(node_classes)
    ref = _sample(node_classes, model, clip)
    on_cpu = multigpu_nodes["SelectModelDevice"].execute(model, "cpu").result[0]
    assert on_cpu is not model and on_cpu.load_device == torch.device("cpu")
    split = multigpu_nodes["MultiGPU_WorkUnits"].execute(on_cpu, 2).result[0]  # one device here: nothing to add
    assert split.get_additional_models_with_key("multigpu") == []
    assert torch.equal(_sample(node_classes, split, clip), ref)


def test_cfg_split_over_two_devices_runs_our_model_and_matches(node_classes, multigpu_nodes, tiny, comfy, monkeypatch):
    import comfy.model_management as mm

    model = node_classes["NewBieDiTLoader"].execute("NewBie-tiny.safetensors", "fp32").result[0]
    clip = _clip(node_classes)
    ref = _sample(node_classes, model, clip)
    second = torch.device("cpu", 0)
    monkeypatch.setattr(mm, "get_all_torch_devices", lambda exclude_current=False: [torch.device("cpu"), second])
    split = multigpu_nodes["MultiGPU_WorkUnits"].execute(model, 2).result[0]
    clones = split.get_additional_models_with_key("multigpu")
    assert [c.load_device for c in clones] == [second]
    assert clones[0].model is not model.model  # an independent copy made by our loader's factory
    used = []
    forward = type(clones[0].model.diffusion_model).forward

    def spy(self, x, *args, **kwargs):
        used.append((id(self), x.shape[0]))
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(type(clones[0].model.diffusion_model), "forward", spy)
    out = _sample(node_classes, split, clip)
    assert {i for i, _ in used} == {id(model.model.diffusion_model), id(clones[0].model.diffusion_model)}
    assert torch.allclose(out, ref, atol=1e-5)
