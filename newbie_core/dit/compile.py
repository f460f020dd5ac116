"""Opt-in ``torch.compile`` of the repeated main block: one compiled graph shared by every layer.

The block's forward is compiled once as a function of (block, activations), so all main layers
reuse the same graph with their own weights as inputs. Shapes are dynamic, so neither the step,
the batch (CFG on or off) nor the caption length triggers a recompile; the only second graph is
the padded-batch variant with a key mask. The refiners (two small blocks each) stay eager.
"""

from __future__ import annotations

import types

import torch

from .layers import JointTransformerBlock


def compile_repeated_block(model, backend="inductor", mode: str | None = None):
    """Compile ``model.layers``' block forward in place (idempotent); returns the compiled function."""
    if getattr(model, "_compiled_block", None) is not None:
        return model._compiled_block
    compiled = torch.compile(JointTransformerBlock.forward, backend=backend, mode=mode, dynamic=True)
    for block in model.layers:
        block.forward = types.MethodType(compiled, block)
    model._compiled_block = compiled
    return compiled


def uncompile(model) -> None:
    for block in model.layers:
        block.__dict__.pop("forward", None)
    model._compiled_block = None
