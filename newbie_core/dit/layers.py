"""Next-DiT building blocks. Attribute names mirror the official checkpoint keys exactly.

Every weighted layer is created from an injected ``operations`` namespace (``torch.nn`` by
default) so a host can substitute casting/offloading Linear layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import NextDiTConfig
from .rope import apply_rope, upcast

_fused_rms_norm = getattr(F, "rms_norm", None)

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class RMSNorm(nn.Module):
    """RMSNorm as the official pure-PyTorch class computes it: normalise in float32, cast, scale.

    ``dtype`` is the output dtype (default: the input's); the fp16 path uses it to read the
    float32 residual stream and hand fp16 to the next matmul, or the reverse. The weight is cast
    to the activation's device and dtype on use, so hosts that keep weights in another dtype
    (fp8, offloaded) still work.
    """

    def __init__(self, dim: int, eps: float, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The RMSNorm maths (normalise in float32 or better, cast to ``dtype``, scale); hosts call it with cast weights."""
    dtype = dtype or x.dtype
    weight = weight.to(device=x.device, dtype=dtype)
    xf = upcast(x)
    if _fused_rms_norm is None:  # torch < 2.4
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(dtype) * weight
    if xf.dtype == dtype:  # one kernel; bitwise equal to normalise-then-scale in float32/float64
        return _fused_rms_norm(xf, (xf.shape[-1],), weight, eps)
    return _fused_rms_norm(xf, (xf.shape[-1],), eps=eps).to(dtype) * weight


def norm_class(operations) -> type:
    """The RMSNorm to build: a host may supply a subclass (``operations.NewBieRMSNorm``) that casts like its ops."""
    return getattr(operations, "NewBieRMSNorm", RMSNorm)


def residual_dtype(compute: torch.dtype) -> torch.dtype:
    """fp16 compute keeps the residual stream in float32: big DiTs grow activations past fp16's 65504."""
    return torch.float32 if compute == torch.float16 else compute


#: Per-token products above this are scaled down by a power of two before fp16's ``w2`` matmul.
FP16_FFN_LIMIT = 1024.0


def timestep_frequencies(
    t: torch.Tensor, size: int = 256, max_period: float = 10000.0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Sinusoidal features [cos | sin] of ``t`` (official order, t unscaled; float32 unless float64 is asked)."""
    half = size // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=dtype, device=t.device) / half)
    args = t[:, None].to(dtype) * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, operations=nn, device=None, dtype=None, frequency_size: int = 256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(
            operations.Linear(frequency_size, hidden, bias=True, device=device, dtype=dtype),
            nn.SiLU(),
            operations.Linear(hidden, hidden, bias=True, device=device, dtype=dtype),
        )

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        math_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return self.mlp(timestep_frequencies(t, self.frequency_size, dtype=math_dtype).to(dtype))


class JointAttention(nn.Module):
    """Fused-qkv grouped-query attention with per-head q/k RMSNorm and 3-axis RoPE."""

    def __init__(self, cfg: NextDiTConfig, operations=nn, device=None, dtype=None):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads
        self.head_dim = cfg.head_dim
        qkv_out = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
        self.qkv = operations.Linear(cfg.dim, qkv_out, bias=False, device=device, dtype=dtype)
        self.out = operations.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False, device=device, dtype=dtype)
        if cfg.qk_norm:
            norm = norm_class(operations)
            self.q_norm = norm(cfg.head_dim, cfg.qk_norm_eps, device=device, dtype=dtype)
            self.k_norm = norm(cfg.head_dim, cfg.qk_norm_eps, device=device, dtype=dtype)
        else:
            self.q_norm = self.k_norm = nn.Identity()

    def forward(self, x, key_mask, freqs, attention: AttentionFn) -> torch.Tensor:
        b, s, _ = x.shape
        q_width = self.n_heads * self.head_dim
        kv_width = self.n_kv_heads * self.head_dim
        q, k, v = self.qkv(x).split([q_width, kv_width, kv_width], dim=-1)
        q = self.q_norm(q.view(b, s, self.n_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(k.view(b, s, self.n_kv_heads, self.head_dim)).transpose(1, 2)
        v = v.view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q = apply_rope(q, freqs)
        k = apply_rope(k, freqs)
        return self.out(attention(q, k, v, key_mask))


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, dim: int, hidden: int, operations=nn, device=None, dtype=None):
        super().__init__()
        self.w1 = operations.Linear(dim, hidden, bias=False, device=device, dtype=dtype)
        self.w2 = operations.Linear(hidden, dim, bias=False, device=device, dtype=dtype)
        self.w3 = operations.Linear(dim, hidden, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float16:
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        # fp16: the gated product can pass 65504. Form it in float32, bring each token under the
        # limit with an exact power-of-two scale, run w2 in fp16, undo the scale in float32.
        product = F.silu(self.w1(x).float()) * self.w3(x).float()
        peak = product.abs().amax(dim=-1, keepdim=True)
        scale = torch.exp2(torch.ceil(torch.log2(peak / FP16_FFN_LIMIT)).clamp_min(0))
        return self.w2((product / scale).half()).float() * scale


class JointTransformerBlock(nn.Module):
    """Sandwich-normed block; with ``modulation`` it takes tanh-gated adaLN scales from ``c`` (no shift)."""

    def __init__(self, cfg: NextDiTConfig, modulation: bool, operations=nn, device=None, dtype=None):
        super().__init__()
        self.attention = JointAttention(cfg, operations, device, dtype)
        self.feed_forward = FeedForward(cfg.dim, cfg.ffn_hidden_dim, operations, device, dtype)
        norm = norm_class(operations)
        self.attention_norm1 = norm(cfg.dim, cfg.norm_eps, device=device, dtype=dtype)
        self.ffn_norm1 = norm(cfg.dim, cfg.norm_eps, device=device, dtype=dtype)
        self.attention_norm2 = norm(cfg.dim, cfg.norm_eps, device=device, dtype=dtype)
        self.ffn_norm2 = norm(cfg.dim, cfg.norm_eps, device=device, dtype=dtype)
        self.modulation = modulation
        if modulation:
            self.adaLN_modulation = nn.Sequential(
                nn.SiLU(),
                operations.Linear(cfg.adaln_dim, 4 * cfg.dim, bias=True, device=device, dtype=dtype),
            )

    def forward(self, x, key_mask, freqs, c, attention: AttentionFn, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``x`` is the residual stream; ``dtype`` the matmul dtype (default: the stream's)."""
        dtype = dtype or x.dtype
        if self.modulation:
            scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(c).unsqueeze(1).chunk(4, dim=-1)
            h = self.attention(self.attention_norm1(x, dtype) * (1 + scale_msa), key_mask, freqs, attention)
            # Product, then sum, each rounded, as the official block: a fused addcmul rounds once and
            # leaves fp32 outputs ~1 ulp off the official ones (tests/test_official_parity.py).
            x = x + gate_msa.tanh() * self.attention_norm2(h, x.dtype)
            h = self.feed_forward(self.ffn_norm1(x, dtype) * (1 + scale_mlp))
            return x + gate_mlp.tanh() * self.ffn_norm2(h, x.dtype)
        x = x + self.attention_norm2(
            self.attention(self.attention_norm1(x, dtype), key_mask, freqs, attention), x.dtype
        )
        return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x, dtype)), x.dtype)


class FinalLayer(nn.Module):
    """Affine-free LayerNorm, adaLN scale (no shift, no gate), projection to patch features."""

    def __init__(self, cfg: NextDiTConfig, operations=nn, device=None, dtype=None):
        super().__init__()
        self.linear = operations.Linear(cfg.dim, cfg.patch_features, bias=True, device=device, dtype=dtype)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(),
            operations.Linear(cfg.adaln_dim, cfg.dim, bias=True, device=device, dtype=dtype),
        )

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale = self.adaLN_modulation(c).unsqueeze(1)
        x = F.layer_norm(x, (x.shape[-1],), eps=1e-6) * (1 + scale)
        return self.linear(x.to(c.dtype))


class CastingLinear(nn.Linear):
    """Linear whose stored weight (e.g. fp8) is cast to the activation dtype on every call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


class casting_operations:
    """An ``operations`` namespace for standalone use of low-precision stored weights."""

    Linear = CastingLinear
