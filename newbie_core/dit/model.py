"""Next-DiT with the pooled-CLIP adaLN path (NewBie-image-Exp0.1), written from the published architecture.

Conventions are those of the official code (see ``newbie_core.conventions``): ``t`` in [0, 1]
with 0 = pure noise, and the output is the velocity ``x_data - x_noise``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..weights import FLOAT8_DTYPES
from .attention import sdpa_attention
from .config import NextDiTConfig
from .layers import AttentionFn, FinalLayer, JointTransformerBlock, TimestepEmbedder, norm_class, residual_dtype
from .rope import rope_frequencies


class NextDiT(nn.Module):
    def __init__(
        self,
        config: NextDiTConfig,
        operations=nn,
        device=None,
        dtype=None,
        attention: AttentionFn = sdpa_attention,
    ):
        super().__init__()
        cfg = config
        self.config = cfg
        self.attention = attention
        #: Matmuls run in this dtype when set; None follows the parameters (bf16 for fp8 storage).
        self.compute_dtype: torch.dtype | None = None
        #: Optional ``run(blocks, x, *args)`` that replaces the main-layer loop (weight streaming, step cache).
        self.layer_runner = None
        self._rope_cache: dict = {}
        ops = dict(operations=operations, device=device, dtype=dtype)
        RMSNorm = norm_class(operations)  # noqa: N806

        self.x_embedder = operations.Linear(cfg.patch_features, cfg.dim, bias=True, device=device, dtype=dtype)
        self.t_embedder = TimestepEmbedder(cfg.adaln_dim, **ops)
        self.cap_embedder = nn.Sequential(
            RMSNorm(cfg.cap_feat_dim, cfg.norm_eps, device=device, dtype=dtype),
            operations.Linear(cfg.cap_feat_dim, cfg.dim, bias=True, device=device, dtype=dtype),
        )
        if cfg.clip_text_dim is not None:
            self.clip_text_pooled_proj = nn.Sequential(
                RMSNorm(cfg.clip_text_dim, cfg.pooled_norm_eps, device=device, dtype=dtype),
                operations.Linear(cfg.clip_text_dim, cfg.clip_text_dim, bias=True, device=device, dtype=dtype),
            )
            self.time_text_embed = nn.Sequential(
                nn.SiLU(),
                operations.Linear(
                    cfg.adaln_dim + cfg.clip_text_dim, cfg.adaln_dim, bias=True, device=device, dtype=dtype
                ),
            )
        self.noise_refiner = nn.ModuleList(
            JointTransformerBlock(cfg, modulation=True, **ops) for _ in range(cfg.n_refiner_layers)
        )
        self.context_refiner = nn.ModuleList(
            JointTransformerBlock(cfg, modulation=False, **ops) for _ in range(cfg.n_refiner_layers)
        )
        self.layers = nn.ModuleList(JointTransformerBlock(cfg, modulation=True, **ops) for _ in range(cfg.n_layers))
        # Saved in official checkpoints but never used by any forward pass; kept so keys match.
        self.norm_final = RMSNorm(cfg.dim, cfg.norm_eps, device=device, dtype=dtype)
        self.final_layer = FinalLayer(cfg, **ops)

    # ------------------------------------------------------------------ helpers
    def _rope(self, key, positions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """RoPE tables, reused across sampling steps (positions only depend on the shapes and caption lengths)."""
        key = (key, positions.device, dtype)
        table = self._rope_cache.get(key)
        if table is None:
            if len(self._rope_cache) >= 12:
                self._rope_cache.clear()
            table = rope_frequencies(positions, self.config.axes_dims, self.config.rope_theta, dtype)
            self._rope_cache[key] = table
        return table

    def activation_dtype(self, x: torch.Tensor) -> torch.dtype:
        """The matmul dtype: ``compute_dtype`` if set, else the parameters' (fp8 storage computes in bf16)."""
        if self.compute_dtype is not None:
            return self.compute_dtype
        weight = self.x_embedder.weight
        return torch.bfloat16 if weight.dtype in FLOAT8_DTYPES else weight.dtype

    def _check_inputs(self, x, cap_feats, cap_mask, clip_text_pooled):
        cfg = self.config
        if x.ndim != 4:
            raise ValueError(f"latent x must be [batch, channels, height, width], got shape {list(x.shape)}")
        b, c, h, w = x.shape
        if c != cfg.in_channels:
            raise ValueError(f"latent x has {c} channels, the model expects {cfg.in_channels}")
        p = cfg.patch_size
        if h % p or w % p:
            raise ValueError(
                f"latent size {h}x{w} is not divisible by the patch size {p} "
                f"(image sides must be multiples of {8 * p} pixels)"
            )
        if cap_feats.ndim != 3 or cap_feats.shape[0] != b or cap_feats.shape[2] != cfg.cap_feat_dim:
            raise ValueError(f"cap_feats must be [{b}, tokens, {cfg.cap_feat_dim}], got shape {list(cap_feats.shape)}")
        if cap_mask is not None and tuple(cap_mask.shape) != tuple(cap_feats.shape[:2]):
            raise ValueError(
                f"cap_mask shape {list(cap_mask.shape)} does not match cap_feats {list(cap_feats.shape[:2])}"
            )
        if clip_text_pooled is not None:
            if cfg.clip_text_dim is None:
                raise ValueError("this model has no pooled-text input (clip_text_dim is None)")
            if tuple(clip_text_pooled.shape) != (b, cfg.clip_text_dim):
                raise ValueError(
                    f"clip_text_pooled must be [{b}, {cfg.clip_text_dim}], got shape {list(clip_text_pooled.shape)}"
                )

    def conditioning_vector(self, t: torch.Tensor, clip_text_pooled: torch.Tensor | None, dtype) -> torch.Tensor:
        """The single adaLN input ``c``; without a pooled vector the official code uses the time embedding alone."""
        c = self.t_embedder(t, dtype)
        if clip_text_pooled is not None and self.config.clip_text_dim is not None:
            pooled = self.clip_text_pooled_proj(clip_text_pooled.to(dtype))
            c = self.time_text_embed(torch.cat([c, pooled], dim=-1))
        return c

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, (H/p)(W/p), p*p*C], tokens row-major, features ordered (p_row, p_col, channel)."""
        b, c, h, w = x.shape
        p = self.config.patch_size
        return x.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)

    def unpatchify(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Exact inverse of :meth:`patchify`."""
        b = tokens.shape[0]
        p = self.config.patch_size
        c = self.config.in_channels
        return tokens.view(b, h // p, w // p, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        cap_feats: torch.Tensor,
        cap_mask: torch.Tensor | None = None,
        clip_text_pooled: torch.Tensor | None = None,
        attention: AttentionFn | None = None,
        regions=None,
    ) -> torch.Tensor:
        """Predict the velocity for latents ``x`` at time ``t`` (0 = noise, 1 = data).

        ``cap_feats`` [B, L, cap_feat_dim] are right-padded Gemma states with ``cap_mask``
        [B, L] (1 = real token; None = no padding); ``clip_text_pooled`` [B, clip_text_dim].
        ``regions``: an optional ``newbie_core.regions.RegionalAttention`` masking the main layers.
        """
        self._check_inputs(x, cap_feats, cap_mask, clip_text_pooled)
        attention = attention or self.attention
        cfg = self.config
        out_dtype = x.dtype
        dtype = self.activation_dtype(x)
        stream = residual_dtype(dtype)  # float32 under fp16 compute
        x = x.to(dtype)
        b, _, h, w = x.shape
        device = x.device
        p = cfg.patch_size
        grid_h, grid_w = h // p, w // p
        n_img = grid_h * grid_w
        n_cap = cap_feats.shape[1]

        t = torch.as_tensor(t, device=device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        if t.ndim == 0:
            t = t.expand(b)
        c = self.conditioning_vector(t, clip_text_pooled, dtype)

        if cap_mask is None:
            cap_lens = torch.full((b,), n_cap, device=device, dtype=torch.long)
        else:
            cap_lens = cap_mask.to(device=device).bool().sum(dim=1)
        padded = bool((cap_lens != n_cap).any())
        cap_valid = torch.arange(n_cap, device=device)[None, :] < cap_lens[:, None] if padded else None

        # Position ids: caption token k -> (k, 0, 0); image patch (r, c) -> (cap_len, r, c).
        cap_pos = torch.zeros(b, n_cap, 3, device=device, dtype=torch.long)
        cap_pos[..., 0] = torch.arange(n_cap, device=device)
        if cap_valid is not None:
            cap_pos = cap_pos * cap_valid[..., None]
        rows = torch.arange(grid_h, device=device).repeat_interleave(grid_w)
        cols = torch.arange(grid_w, device=device).repeat(grid_h)
        img_pos = torch.stack(
            [cap_lens[:, None].expand(b, n_img), rows.expand(b, n_img), cols.expand(b, n_img)], dim=-1
        )

        # Gemma states can exceed fp16's range: the input norm reads them in the stream dtype
        cap = self.cap_embedder[1](self.cap_embedder[0](cap_feats.to(stream), dtype)).to(stream)
        rope_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        shape_key = (b, n_cap, grid_h, grid_w, tuple(cap_lens.tolist()) if padded else None)
        cap_freqs = self._rope(("cap", shape_key), cap_pos, rope_dtype)
        for block in self.context_refiner:
            cap = block(cap, cap_valid, cap_freqs, None, attention, dtype)

        img = self.x_embedder(self.patchify(x)).to(stream)
        img_freqs = self._rope(("img", shape_key), img_pos, rope_dtype)
        for block in self.noise_refiner:
            img = block(img, None, img_freqs, c, attention, dtype)

        if padded:
            joint, joint_pos, key_mask, img_index = self._join_padded(cap, img, cap_pos, img_pos, cap_lens)
        else:
            joint = torch.cat([cap, img], dim=1)
            joint_pos = torch.cat([cap_pos, img_pos], dim=1)
            key_mask, img_index = None, None
        freqs = self._rope(("joint", shape_key), joint_pos, rope_dtype)
        region_bias = None
        if regions is not None:
            region_bias = regions.joint_bias(cap_lens, grid_h, grid_w, joint.shape[1], dtype, device)
        if region_bias is not None and regions.settings.layers is not None:  # regions on some layers only
            for i, block in enumerate(self.layers):
                mask = region_bias if regions.applies_to_layer(i) else key_mask
                joint = block(joint, mask, freqs, c, attention, dtype)
        else:
            mask = key_mask if region_bias is None else region_bias
            if self.layer_runner is not None:
                joint = self.layer_runner(self.layers, joint, mask, freqs, c, attention, dtype)
            else:
                for block in self.layers:
                    joint = block(joint, mask, freqs, c, attention, dtype)

        if img_index is None:
            img_tokens = joint[:, n_cap:]
        else:
            img_tokens = joint.gather(1, img_index[..., None].expand(b, n_img, joint.shape[-1]))
        out = self.final_layer(img_tokens, c)
        return self.unpatchify(out, h, w).to(out_dtype)

    @staticmethod
    def _join_padded(cap, img, cap_pos, img_pos, cap_lens):
        """Per sample: [valid caption | image | zero padding], built with one gather (no per-sample loop)."""
        b, n_cap, dim = cap.shape
        n_img = img.shape[1]
        seq = int(cap_lens.max()) + n_img
        slot = torch.arange(seq, device=cap.device)[None, :].expand(b, seq)
        lens = cap_lens[:, None]
        pad_index = n_cap + n_img
        source = torch.where(
            slot < lens, slot, torch.where(slot < lens + n_img, n_cap + slot - lens, torch.full_like(slot, pad_index))
        )
        zeros = cap.new_zeros(b, 1, dim)
        joint = torch.cat([cap, img, zeros], dim=1).gather(1, source[..., None].expand(b, seq, dim))
        pos_src = torch.cat([cap_pos, img_pos, cap_pos.new_zeros(b, 1, cap_pos.shape[-1])], dim=1)
        joint_pos = pos_src.gather(1, source[..., None].expand(b, seq, pos_src.shape[-1]))
        key_mask = slot < lens + n_img
        img_index = lens + torch.arange(n_img, device=cap.device)[None, :]
        return joint, joint_pos, key_mask, img_index
