"""CPU sampling with Linear weights repacked into oneDNN's blocked layout for the duration of a run.

torch's CPU Linear hands the dense ``[out, in]`` weight to MKL's sgemm on every call. oneDNN with
the weight reordered once into the layout its kernels read is 20-35 % faster on the same maths
(``benchmarks/bench_dit.py``: ``ours`` against ``ours-dense``). Packing happens around one
generation: each weight is replaced by its packed form (one copy in memory at any time) and put
back bit for bit on exit, so LoRA merges, ``.to()`` and state dicts always see ordinary dense
weights. Only plain ``nn.Linear`` layers in float32 or bfloat16 are packed; hosts' casting layers
(so everything in ComfyUI, where the patcher owns the weights), compiled blocks, models with
forward hooks (streamed blocks) and fp16/fp8 compute stay as they are.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)


@functools.cache
def packing_works(dtype: torch.dtype) -> bool:
    """Whether this torch build and CPU run oneDNN's packed Linear in ``dtype`` and get F.linear's numbers."""
    if dtype not in PACKABLE_DTYPES or not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        weight = torch.randn(24, 16, generator=gen).to(dtype)
        x = torch.randn(3, 5, 16, generator=gen).to(dtype)
        layer = PackedLinear(weight, None)
        got = layer(x).float()
        unpacked = layer.dense_weight()
    except (RuntimeError, AttributeError):  # no oneDNN kernels for this CPU or build
        return False
    want = torch.nn.functional.linear(x.float(), weight.float())
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    return torch.equal(unpacked, weight) and torch.allclose(got, want, rtol=tolerance, atol=tolerance)


class PackedLinear(nn.Module):
    """A frozen Linear whose weight lives in oneDNN's layout; ``dense_weight()`` gives the original back."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(weight.detach()))
        self.register_buffer("bias", None if bias is None else bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.weight.dtype:  # oneDNN's own message for this names no dtype
            raise TypeError(f"packed Linear holds {self.weight.dtype} weights but got a {x.dtype} input")
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")

    def dense_weight(self) -> torch.Tensor:
        return self.weight.to_dense()


def _packable(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (
        type(module) is nn.Linear  # exactly: subclasses (casting, offloading, host ops) do their own thing
        and weight is not None
        and weight.device.type == "cpu"
        and not weight.requires_grad
        and packing_works(weight.dtype)
    )


def _eligible(model: nn.Module) -> bool:
    if getattr(model, "_compiled_block", None) is not None:  # inductor packs (and guards on) the dense weights
        return False
    if any(m._forward_pre_hooks or m._forward_hooks for m in model.modules()):
        return False  # someone else moves these weights (memory.LayerStreamer holds its own references to them)
    compute = getattr(model, "compute_dtype", None)
    weight = model.x_embedder.weight
    return compute is None or compute == weight.dtype


@contextlib.contextmanager
def packed_for_cpu(model: nn.Module):
    """Within the block, ``model``'s CPU Linear layers run from packed weights; yields how many were packed.

    The original ``nn.Linear`` objects and their weight Parameters are put back on exit, with the
    values restored exactly, also when the block raises.
    """
    swapped: list[tuple[nn.Module, str, nn.Linear, PackedLinear]] = []
    try:
        if _eligible(model):
            for parent in list(model.modules()):
                for name, child in list(parent.named_children()):
                    if _packable(child):
                        packed = PackedLinear(child.weight, child.bias)
                        swapped.append((parent, name, child, packed))  # recorded first: an interrupt still restores
                        setattr(parent, name, packed)
                        child.weight.data = child.weight.data.new_empty(0)  # the packed copy is now the only one
        yield len(swapped)
    finally:
        while swapped:  # one layer at a time, dropping each packed copy before the next is unpacked
            parent, name, original, packed = swapped.pop()
            original.weight.data = packed.dense_weight()  # the same Parameter object, so references to it stay valid
            setattr(parent, name, original)
            del packed
