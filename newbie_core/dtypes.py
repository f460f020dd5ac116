"""The weight dtypes this package knows: names users type, the torch dtype, and what each means on CPU and GPU.

One table; ``parse_dtype``, the CLI's ``--dtype`` help and the loader nodes' dtype lists all read it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import ConfigError


@dataclass(frozen=True)
class DType:
    name: str  # what users type and what nodes show
    torch_name: str  # attribute of ``torch``
    aliases: tuple[str, ...]
    gpu: str  # what it means on a GPU (for --help)
    cpu: str  # what it means on a CPU (for --help)
    storage_only: bool = False  # fp8: stored compactly, computed in bf16
    fast_variant: bool = False  # ComfyUI offers "<name>_fast" (fp8 matmuls on GPUs that have them)

    @property
    def torch(self) -> torch.dtype | None:
        """The torch dtype, or None where this torch build lacks it (old torch without float8)."""
        return getattr(torch, self.torch_name, None)


DTYPES: tuple[DType, ...] = (
    DType(
        "bf16",
        "bfloat16",
        ("bfloat16",),
        gpu="bfloat16 weights and compute (GPU default; half the memory of fp32)",
        cpu="half the memory; with native bf16 (AVX-512 BF16, AMX, Arm BF16) faster than fp32,\n"
        "                   elsewhere the VAE decodes in fp32 (bf16 convolutions are 3-19x slower there)",
    ),
    DType(
        "fp16",
        "float16",
        ("float16", "half"),
        gpu="float16 weights and compute, the VAE decodes in fp32 (fp16 overflows there)",
        cpu="float16 weights, the VAE decodes in fp32; slow on most CPUs",
    ),
    DType(
        "fp32",
        "float32",
        ("float32", "float"),
        gpu="full precision, twice the memory of bf16",
        cpu="full precision (CPU default)",
    ),
    DType(
        "fp8_e4m3fn",
        "float8_e4m3fn",
        ("float8_e4m3fn",),
        gpu="stored in 8 bits (half of bf16), computed in bf16",
        cpu="stored in 8 bits, computed in bf16",
        storage_only=True,
        fast_variant=True,
    ),
    DType(
        "fp8_e5m2",
        "float8_e5m2",
        ("float8_e5m2",),
        gpu="stored in 8 bits, computed in bf16",
        cpu="stored in 8 bits, computed in bf16",
        storage_only=True,
    ),
)

_BY_NAME = {n: d for d in DTYPES if d.torch is not None for n in (d.name, *d.aliases)}
FLOAT8_DTYPES = tuple(d.torch for d in DTYPES if d.storage_only and d.torch is not None)
#: Names meaning "keep the file's dtype / let the host choose".
DEFAULT_NAMES = ("default", "auto", "")


def dtype_names(include_fp8: bool = True) -> list[str]:
    """Canonical names this torch build supports, in table order."""
    return [d.name for d in DTYPES if d.torch is not None and (include_fp8 or not d.storage_only)]


def node_dtype_options(include_fp8: bool = True) -> list[str]:
    """Widget options for loader nodes: ``default``, then every table entry (fast variants after their base)."""
    out = ["default"]
    for d in DTYPES:
        if d.storage_only and not include_fp8:
            continue
        out.append(d.name)
        if d.fast_variant:
            out.append(d.name + "_fast")
    return out


def parse_dtype(value) -> torch.dtype | None:
    """``None``/"default" -> None (keep the file's dtype); a torch dtype or a known name -> that dtype."""
    if value is None or (isinstance(value, str) and value.lower() in DEFAULT_NAMES):
        return None
    if isinstance(value, torch.dtype):
        if any(d.torch == value for d in DTYPES):
            return value
        raise ConfigError(f"unsupported weight dtype {value}; choose one of: {', '.join(dtype_names())}")
    if isinstance(value, str) and value.lower() in _BY_NAME:
        return _BY_NAME[value.lower()].torch
    raise ConfigError(f"unknown dtype {value!r}; choose one of: default, {', '.join(dtype_names())}")


def cpu_has_fast_bf16() -> bool:
    """This CPU has native bf16 kernels (x86: AVX-512 BF16 or AMX; Arm: BF16) that oneDNN may use.

    Measured on the real-width FLUX VAE decoder at 64x64 (2 threads, ``ONEDNN_MAX_CPU_ISA`` limiting the
    kernels of an AVX-512 BF16 CPU): native bf16 2.1 s vs fp32 3.1 s; AVX-512 without BF16 0.74 s vs 0.22 s;
    AVX2 134.8 s vs 7.1 s. So bf16 is used on the CPU only with native kernels.
    """
    import platform

    import torch

    try:
        if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return False  # respects ONEDNN_MAX_CPU_ISA
        if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86"):
            cpu = torch.cpu
            return bool(
                getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
            )
        return True
    except (AttributeError, RuntimeError):
        return False


def vae_dtype(weights: torch.dtype, device) -> torch.dtype:
    """The dtype the VAE decodes in for pipeline weights ``weights`` on ``device``."""
    if weights in FLOAT8_DTYPES:
        weights = torch.bfloat16
    if weights == torch.float16:
        return torch.float32  # fp16 overflows in the VAE
    if weights == torch.bfloat16 and torch.device(device).type == "cpu" and not cpu_has_fast_bf16():
        return torch.float32
    return weights


def help_text() -> str:
    """A small table for ``--help``: what each dtype means on a GPU and on a CPU."""
    rows = []
    for d in DTYPES:
        if d.torch is not None:
            rows += [f"  {d.name:<11} GPU: {d.gpu}", f"  {'':<11} CPU: {d.cpu}"]
    return "\n".join(rows)
