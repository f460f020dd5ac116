"""A deliberately naive float64 Next-DiT, written from the architecture description only.

It shares no code with ``newbie_core``: one sample at a time, explicit loops over heads,
complex-number RoPE, softmax written out. Slow, but easy to check by eye.
"""

from __future__ import annotations

import math

import torch


def _lin(sd, name, x, bias=True):
    y = x @ sd[name + ".weight"].T
    if bias and (name + ".bias") in sd:
        y = y + sd[name + ".bias"]
    return y


def _rms(sd, name, x, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * sd[name + ".weight"]


def _silu(x):
    return x / (1 + torch.exp(-x))


def _rope(x, pos, axes_dims, theta):
    """x: [S, heads, D] real; pos: list of (a0, a1, a2) per token."""
    s, heads, d = x.shape
    out = torch.empty_like(x)
    for i in range(s):
        factors = []
        for axis, ad in enumerate(axes_dims):
            for j in range(ad // 2):
                freq = 1.0 / (theta ** (2 * j / ad))
                ang = pos[i][axis] * freq
                factors.append(complex(math.cos(ang), math.sin(ang)))
        f = torch.tensor(factors, dtype=torch.complex128)
        for h in range(heads):
            pairs = torch.complex(x[i, h, 0::2], x[i, h, 1::2]) * f
            out[i, h, 0::2] = pairs.real
            out[i, h, 1::2] = pairs.imag
    return out


def _attention(sd, name, x, pos, cfg):
    s = x.shape[0]
    hd = cfg["dim"] // cfg["n_heads"]
    nq, nkv = cfg["n_heads"], cfg["n_kv_heads"]
    qkv = _lin(sd, name + ".qkv", x, bias=False)
    q = qkv[:, : nq * hd].reshape(s, nq, hd)
    k = qkv[:, nq * hd : (nq + nkv) * hd].reshape(s, nkv, hd)
    v = qkv[:, (nq + nkv) * hd :].reshape(s, nkv, hd)
    q = _rms(sd, name + ".q_norm", q, cfg["qk_norm_eps"])
    k = _rms(sd, name + ".k_norm", k, cfg["qk_norm_eps"])
    q = _rope(q, pos, cfg["axes_dims"], cfg["theta"])
    k = _rope(k, pos, cfg["axes_dims"], cfg["theta"])
    group = nq // nkv
    heads = []
    for h in range(nq):
        kv = h // group
        scores = (q[:, h] @ k[:, kv].T) / math.sqrt(hd)
        weights = torch.exp(scores - scores.max(-1, keepdim=True).values)
        weights = weights / weights.sum(-1, keepdim=True)
        heads.append(weights @ v[:, kv])
    return _lin(sd, name + ".out", torch.cat(heads, dim=-1), bias=False)


def _ffn(sd, name, x):
    return _lin(sd, name + ".w2", _silu(_lin(sd, name + ".w1", x, False)) * _lin(sd, name + ".w3", x, False), False)


def _block(sd, name, x, pos, c, cfg):
    eps = cfg["norm_eps"]
    if c is None:
        x = x + _rms(
            sd,
            name + ".attention_norm2",
            _attention(sd, name + ".attention", _rms(sd, name + ".attention_norm1", x, eps), pos, cfg),
            eps,
        )
        return x + _rms(
            sd, name + ".ffn_norm2", _ffn(sd, name + ".feed_forward", _rms(sd, name + ".ffn_norm1", x, eps)), eps
        )
    mod = _lin(sd, name + ".adaLN_modulation.1", _silu(c))
    scale_msa, gate_msa, scale_mlp, gate_mlp = mod.chunk(4)
    a = _attention(sd, name + ".attention", _rms(sd, name + ".attention_norm1", x, eps) * (1 + scale_msa), pos, cfg)
    x = x + torch.tanh(gate_msa) * _rms(sd, name + ".attention_norm2", a, eps)
    f = _ffn(sd, name + ".feed_forward", _rms(sd, name + ".ffn_norm1", x, eps) * (1 + scale_mlp))
    return x + torch.tanh(gate_mlp) * _rms(sd, name + ".ffn_norm2", f, eps)


def reference_forward(sd, cfg, x, t, cap_feats, cap_mask, pooled):
    """Velocity for each sample, computed alone. All tensors float64; cfg is a plain dict."""
    sd = {k: v.double() for k, v in sd.items()}
    outs = []
    p = cfg["patch_size"]
    for b in range(x.shape[0]):
        img = x[b].double()
        ch, h, w = img.shape
        cap_len = int(cap_mask[b].sum()) if cap_mask is not None else cap_feats.shape[1]
        half = 128
        freqs = torch.tensor([math.exp(-math.log(10000) * k / half) for k in range(half)], dtype=torch.float64)
        args = float(t[b]) * freqs
        temb = torch.cat([torch.cos(args), torch.sin(args)])
        temb = _lin(sd, "t_embedder.mlp.2", _silu(_lin(sd, "t_embedder.mlp.0", temb)))
        if pooled is not None:
            pv = _lin(
                sd,
                "clip_text_pooled_proj.1",
                _rms(sd, "clip_text_pooled_proj.0", pooled[b].double(), cfg["pooled_norm_eps"]),
            )
            c = _lin(sd, "time_text_embed.1", _silu(torch.cat([temb, pv])))
        else:
            c = temb
        cap = cap_feats[b, :cap_len].double()
        cap = _lin(sd, "cap_embedder.1", _rms(sd, "cap_embedder.0", cap, cfg["norm_eps"]))
        cap_pos = [(k, 0, 0) for k in range(cap_len)]
        tokens, img_pos = [], []
        for r in range(h // p):
            for col in range(w // p):
                patch = img[:, r * p : (r + 1) * p, col * p : (col + 1) * p]  # [C, p_row, p_col]
                tokens.append(patch.permute(1, 2, 0).reshape(-1))
                img_pos.append((cap_len, r, col))
        im = _lin(sd, "x_embedder", torch.stack(tokens))
        for i in range(cfg["n_refiner_layers"]):
            cap = _block(sd, f"context_refiner.{i}", cap, cap_pos, None, cfg)
            im = _block(sd, f"noise_refiner.{i}", im, img_pos, c, cfg)
        joint = torch.cat([cap, im])
        pos = cap_pos + img_pos
        for i in range(cfg["n_layers"]):
            joint = _block(sd, f"layers.{i}", joint, pos, c, cfg)
        out = joint[cap_len:]
        out = (out - out.mean(-1, keepdim=True)) / torch.sqrt(out.var(-1, unbiased=False, keepdim=True) + 1e-6)
        scale = _lin(sd, "final_layer.adaLN_modulation.1", _silu(c))
        out = _lin(sd, "final_layer.linear", out * (1 + scale))
        result = torch.zeros(ch, h, w, dtype=torch.float64)
        n = 0
        for r in range(h // p):
            for col in range(w // p):
                result[:, r * p : (r + 1) * p, col * p : (col + 1) * p] = out[n].reshape(p, p, ch).permute(2, 0, 1)
                n += 1
        outs.append(result)
    return torch.stack(outs)
