"""LoRA file helpers: module discovery and the alpha/rank sources."""

from __future__ import annotations

import json

import torch

from newbie_core.lora import lora_alpha_rank, lora_modules, with_alpha


def test_modules_and_alpha_injection():
    sd = {
        "base_model.model.layers.0.attention.qkv.lora_A.weight": torch.zeros(2, 4),
        "base_model.model.layers.0.attention.qkv.lora_B.weight": torch.zeros(4, 2),
        "lora_unet_layers_1_attention_out.lora_up.weight": torch.zeros(4, 2),
        "lora_unet_layers_1_attention_out.lora_down.weight": torch.zeros(2, 4),
        "lora_unet_layers_1_attention_out.alpha": torch.tensor(1.0),
    }
    assert lora_modules(sd) == {"base_model.model.layers.0.attention.qkv", "lora_unet_layers_1_attention_out"}
    out = with_alpha(sd, 16)
    assert float(out["base_model.model.layers.0.attention.qkv.alpha"]) == 16.0
    assert float(out["lora_unet_layers_1_attention_out.alpha"]) == 1.0  # the file's own alpha wins
    assert with_alpha(sd, None) is sd


def test_alpha_from_adapter_config_then_metadata(tmp_path):
    lora = tmp_path / "style.safetensors"
    assert lora_alpha_rank({"ss_network_alpha": "8", "ss_network_dim": "16"}, lora) == (8.0, 16.0)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 2}))
    assert lora_alpha_rank({"ss_network_alpha": "8"}, lora) == (2.0, 4.0)
    assert lora_alpha_rank({}, tmp_path / "elsewhere" / "x.safetensors") == (None, None)
