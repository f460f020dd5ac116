"""Memory profiles (``--vram 6|8|12|24``), layer-by-layer weight streaming and per-stage peak memory.

A profile is only a composition of four switches, each usable on its own:

* ``offload_text_encoders``: Gemma and Jina live in CPU memory and visit the GPU only to encode;
* ``dit_storage``: the DiT's weights stored in fp8, cast to the bf16/fp16 compute dtype per layer;
* ``stream_text_encoders`` / ``stream_dit``: repeated blocks stay in (pinned) CPU memory and each is
  copied to the GPU just before it runs, the next block's copy overlapping the current block's
  compute on a side CUDA stream; on the CPU the copies are no-ops and a streamed run gives the resident
  run's numbers bit for bit (both unpacked: ``dit.cpu_pack`` leaves models with hooks dense);
* ``vae_tile``: VAE decode in tiles of this many latent pixels.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class MemoryProfile:
    vram_gb: int
    offload_text_encoders: bool
    dit_storage: str | None
    stream_text_encoders: bool
    stream_dit: bool
    vae_tile: int | None
    summary: str


PROFILES: dict[int, MemoryProfile] = {
    p.vram_gb: p
    for p in (
        MemoryProfile(24, False, None, False, False, None, "everything resident"),
        MemoryProfile(12, True, None, False, False, 64, "text encoders on the GPU only while encoding; tiled decode"),
        MemoryProfile(
            8, True, "fp8_e4m3fn", True, False, 64, "+ fp8 DiT storage, text encoders streamed layer by layer"
        ),
        MemoryProfile(6, True, "fp8_e4m3fn", True, True, 64, "+ DiT blocks streamed from CPU memory (overlapped)"),
    )
}


def get_profile(vram_gb) -> MemoryProfile | None:
    if vram_gb is None:
        return None
    try:
        return PROFILES[int(vram_gb)]
    except (KeyError, ValueError):
        raise ValueError(f"--vram must be one of {', '.join(map(str, PROFILES))} (GB), got {vram_gb!r}") from None


def repeated_blocks(module: nn.Module) -> nn.ModuleList:
    """The ModuleList holding most of a model's parameters (DiT ``layers``, Gemma's decoder layers)."""
    best, best_count = None, -1
    for child in module.modules():
        if isinstance(child, nn.ModuleList) and len(child) > 0:
            count = sum(p.numel() for p in child.parameters())
            if count > best_count:
                best, best_count = child, count
    if best is None:
        raise ValueError(f"{type(module).__name__} has no repeated blocks to stream")
    return best


class LayerStreamer:
    """Keep ``layers``' weights in CPU memory and bring each onto ``device`` only while it runs.

    Implemented with forward hooks, so the model code is unchanged: the pre-hook swaps the
    block's parameters to their device copies (prefetched for the next block on a side stream),
    the post-hook swaps the CPU masters back and the device copies are freed.
    """

    def __init__(self, layers: nn.ModuleList, device):
        self.layers = layers
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.masters = []
        for layer in layers:
            tensors = [t for t in (*layer.parameters(), *layer.buffers())]
            if self.cuda:
                for t in tensors:
                    t.data = t.data.cpu().pin_memory()
            else:
                for t in tensors:
                    t.data = t.data.to("cpu")
            self.masters.append([(t, t.data) for t in tensors])
        self.pending: dict[int, tuple] = {}
        self.fetches: list[int] = []  # block indices in the order their copies were started
        self.handles = []
        for i, layer in enumerate(layers):
            self.handles.append(layer.register_forward_pre_hook(self._before(i)))
            self.handles.append(layer.register_forward_hook(self._after(i)))

    def _fetch(self, i: int) -> None:
        if i in self.pending or i >= len(self.masters):
            return
        self.fetches.append(i)
        if self.cuda:
            with torch.cuda.stream(self.copy_stream):
                copies = [m.to(self.device, non_blocking=True) for _, m in self.masters[i]]
                event = torch.cuda.Event()
                event.record(self.copy_stream)
        else:
            copies, event = [m.to(self.device) for _, m in self.masters[i]], None
        self.pending[i] = (copies, event)

    def _before(self, i):
        def hook(_module, _args):
            self._fetch(i)
            copies, event = self.pending.pop(i)
            if event is not None:
                current = torch.cuda.current_stream(self.device)
                current.wait_event(event)
                for c in copies:
                    c.record_stream(current)  # the allocator must not reuse it before compute is done
            for (t, _), c in zip(self.masters[i], copies):
                t.data = c
            self._fetch(i + 1)  # overlaps with this block's compute

        return hook

    def _after(self, i):
        def hook(_module, _args, _out):
            for t, master in self.masters[i]:
                t.data = master

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def move_except(module: nn.Module, keep: nn.Module, device) -> None:
    """Move ``module`` to ``device`` but leave the streamed ``keep`` blocks where they are."""
    kept = {id(t) for t in (*keep.parameters(), *keep.buffers())}
    for t in (*module.parameters(), *module.buffers()):
        if id(t) not in kept:
            t.data = t.data.to(device)


def place(module: nn.Module, device) -> None:
    """``module.to(device)``, except for blocks a :class:`LayerStreamer` manages (they stay in CPU memory)."""
    streamer = getattr(module, "_newbie_streamer", None)
    if streamer is None:
        module.to(device)
    else:
        move_except(module, streamer.layers, device)


def stream(module: nn.Module, device) -> LayerStreamer:
    """Stream ``module``'s repeated blocks onto ``device`` (idempotent); the rest is placed there."""
    streamer = getattr(module, "_newbie_streamer", None)
    if streamer is None:
        streamer = LayerStreamer(repeated_blocks(module), device)
        module._newbie_streamer = streamer
    return streamer


def apply_profile(pipe, profile: MemoryProfile) -> None:
    """Configure a pipeline whose models are loaded (in CPU memory or on the device) for ``profile``."""
    pipe.profile = profile
    pipe.offload_text_encoders = profile.offload_text_encoders
    if profile.stream_text_encoders:
        for encoder in (pipe.text_encoders.gemma, pipe.text_encoders.jina):
            stream(encoder, pipe.device)
    if profile.stream_dit:
        stream(pipe.transformer, pipe.device)
    for m in (pipe.transformer, pipe.text_encoders.gemma, pipe.text_encoders.jina):
        if m is pipe.transformer or not profile.offload_text_encoders:
            place(m, pipe.device)
        else:
            place(m, "cpu")


# ------------------------------------------------------------------ per-stage peak memory
class StageMemory:
    """Peak memory of each pipeline stage: CUDA allocator peaks, or the process RSS peak on the CPU."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.stages: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str):
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if cuda:
                torch.cuda.synchronize(self.device)
                self.stages[name] = torch.cuda.max_memory_allocated(self.device) / 2**30
            else:
                self.stages[name] = peak_rss_gib()
            self.seconds[name] = time.perf_counter() - start

    def report(self) -> str:
        if self.device.type == "cuda":
            what = "peak GPU memory allocated"
        else:
            what = "CPU: process peak RSS so far (not resettable per stage)"
        parts = ", ".join(f"{k} {v:.2f} GiB in {self.seconds[k]:.1f}s" for k, v in self.stages.items())
        return f"memory ({what}): {parts}"


def peak_rss_gib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20
