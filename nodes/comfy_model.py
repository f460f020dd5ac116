"""The only module that ties ``newbie_core``'s Next-DiT to ComfyUI's model classes.

The network is our own; everything around it (BaseModel, flow sampling, ModelPatcher, ops,
attention backends, wrappers) is ComfyUI's, so stock samplers, LoRA loaders and model
patches work unchanged. The model class derives from core's ``Lumina2`` so core's LoRA key
maps (diffusers/lycoris names) apply to it too.
"""

from __future__ import annotations

import inspect
import logging

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.patcher_extension as _patcher_extension  # DIFFUSION_MODEL wrappers; in every core >= 0.3.64 (floor)
import comfy.supported_models
import comfy.utils
import torch
import torch.nn.functional as F
from comfy.ldm.modules.attention import optimized_attention_masked as _comfy_attention  # user's attention backend

from ..newbie_core.conventions import comfy_output_from_velocity, t_from_sigma
from ..newbie_core.defaults import OFFICIAL
from ..newbie_core.dit import NextDiT, NextDiTConfig
from ..newbie_core.dit.attention import expand_kv_heads, sdpa_attention, use_gqa_kernel
from ..newbie_core.dit.checkpoint import open_transformer_checkpoint, transformer_files
from ..newbie_core.dit.layers import RMSNorm, rms_norm
from ..newbie_core.dtypes import node_dtype_options, parse_dtype
from . import regions as region_glue

log = logging.getLogger("newbie")

_ATTENTION_TAKES_OPTIONS = "transformer_options" in inspect.signature(_comfy_attention).parameters or any(
    p.kind is p.VAR_KEYWORD for p in inspect.signature(_comfy_attention).parameters.values()
)

WEIGHT_DTYPES = node_dtype_options()


def _dispatcher_takes_gqa() -> bool:
    """Only core's PyTorch-SDPA and basic attention read ``enable_gqa``; sage/flash/xformers need expanded heads."""
    import comfy.ldm.modules.attention as attention_module

    return _comfy_attention in (
        getattr(attention_module, "attention_pytorch", None),
        getattr(attention_module, "attention_basic", None),
    )


def _comfy_attention_fn(transformer_options):
    """Our attention contract on top of ComfyUI's dispatcher (grouped kv heads where it can, additive key mask)."""
    extra = {"transformer_options": transformer_options} if _ATTENTION_TAKES_OPTIONS else {}
    gqa = _dispatcher_takes_gqa() and "optimized_attention_override" not in transformer_options

    def attend(q, k, v, key_mask):
        heads = q.shape[1]
        if gqa and use_gqa_kernel(key_mask) and k.shape[1] != heads:
            return _comfy_attention(q, k, v, heads, None, skip_reshape=True, enable_gqa=True, **extra)
        k = expand_kv_heads(k, heads)
        v = expand_kv_heads(v, heads)
        mask = None
        if key_mask is not None and key_mask.ndim == 4:  # regional attention: already an additive bias
            mask = key_mask.to(q.dtype)
        elif key_mask is not None:
            mask = torch.zeros(key_mask.shape[0], 1, 1, key_mask.shape[1], dtype=q.dtype, device=q.device)
            mask.masked_fill_(~key_mask[:, None, None, :], torch.finfo(q.dtype).min)
        return _comfy_attention(q, k, v, heads, mask, skip_reshape=True, **extra)

    return attend


def _with_casting_norm(operations):
    """``operations`` plus an RMSNorm (our maths) whose weight goes through core's casting and low-VRAM patches."""
    default_cast = bool(getattr(getattr(operations, "Linear", None), "comfy_cast_weights", False))

    class NewBieRMSNorm(RMSNorm, comfy.ops.CastWeightBiasOp):
        comfy_cast_weights = default_cast
        bias = None

        def forward(self, x, dtype=None):
            if self.comfy_cast_weights or len(self.weight_function) > 0 or len(self.bias_function) > 0:
                out_dtype = dtype or x.dtype
                weight, bias, offload = comfy.ops.cast_bias_weight(self, x, dtype=out_dtype, offloadable=True)
                y = rms_norm(x, weight, self.eps, out_dtype)
                comfy.ops.uncast_bias_weight(self, weight, bias, offload)
                return y
            return super().forward(x, dtype)

    return type("NewBieOperations", (operations,), {"NewBieRMSNorm": NewBieRMSNorm})


class ComfyNextDiT(NextDiT):
    """Next-DiT with ComfyUI's forward contract: sigma in, ``-velocity`` out, odd latents padded."""

    def __init__(self, image_model=None, dtype=None, device=None, operations=None, **config):
        ops = _with_casting_norm(operations) if operations is not None else torch.nn
        super().__init__(NextDiTConfig.from_dict(config), operations=ops, device=device, dtype=dtype)
        self.dtype = dtype
        self.in_channels = self.config.in_channels
        self.patch_size = self.config.patch_size

    def activation_dtype(self, x):
        """ComfyUI hands x in the inference dtype it chose (bf16, fp16 or fp32, also over fp8 storage)."""
        return x.dtype

    def forward(self, x, timesteps, context, num_tokens=None, attention_mask=None, transformer_options={}, **kwargs):  # noqa: B006
        args = (x, timesteps, context, num_tokens, attention_mask, transformer_options)
        wrappers = _patcher_extension.get_all_wrappers(
            _patcher_extension.WrappersMP.DIFFUSION_MODEL, transformer_options
        )
        executor = _patcher_extension.WrapperExecutor.new_class_executor(self._comfy_forward, self, wrappers)
        return executor.execute(*args, **kwargs)

    def _comfy_forward(
        self,
        x,
        timesteps,
        context,
        num_tokens=None,
        attention_mask=None,
        transformer_options={},  # noqa: B006  (ComfyUI passes this dict positionally; never mutated here)
        clip_text_pooled=None,
        newbie_regions=None,
        **kwargs,
    ):
        h, w = x.shape[-2:]
        p = self.patch_size
        pad_h, pad_w = (-h) % p, (-w) % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="circular")
        if getattr(self, "_compiled_block", None) is not None:
            attention = sdpa_attention  # one stable function: a per-call closure would make dynamo recompile
        else:
            attention = _comfy_attention_fn(transformer_options)
        regions = None
        if newbie_regions is not None:  # character regions (nodes/regions.py); uncond chunks stay unmasked
            regions = newbie_regions.for_call(timesteps, transformer_options.get("cond_or_uncond"))
        velocity = NextDiT.forward(
            self, x, t_from_sigma(timesteps), context, attention_mask, clip_text_pooled, attention=attention,
            regions=regions,
        )  # fmt: skip
        return comfy_output_from_velocity(velocity)[..., :h, :w]


class CaptionCond(comfy.conds.CONDRegular):
    """Caption states/masks that batch across prompts of different lengths by zero right-padding.

    Padding is exact for this model (padded keys are masked), so cond and uncond of different
    lengths run as one batch instead of two forwards.
    """

    def can_concat(self, other):
        a, b = self.cond, other.cond
        return a.ndim == b.ndim and a.shape[2:] == b.shape[2:] and a.device == b.device

    def concat(self, others):
        conds = [self.cond] + [o.cond for o in others]
        longest = max(c.shape[1] for c in conds)
        padded = []
        for c in conds:
            if c.shape[1] < longest:
                pad = c.new_zeros(c.shape[0], longest - c.shape[1], *c.shape[2:])
                c = torch.cat([c, pad], dim=1)
            padded.append(c)
        return torch.cat(padded)


class NewBieModel(comfy.model_base.Lumina2):
    def __init__(self, model_config, model_type=comfy.model_base.ModelType.FLOW, device=None):
        comfy.model_base.BaseModel.__init__(self, model_config, model_type, device=device, unet_model=ComfyNextDiT)
        self.memory_usage_factor_conds = ()

    def extra_conds(self, **kwargs):
        """Core NewBie/Lumina2 CONDITIONING keys -> model kwargs (mask always sent so prompts batch)."""
        out = {}
        cross_attn = kwargs.get("cross_attn", None)
        if cross_attn is not None:
            mask = kwargs.get("attention_mask", None)
            if mask is None or mask.shape[-1] != cross_attn.shape[1]:
                mask = torch.ones(cross_attn.shape[:2], dtype=torch.long)
            mask = mask.reshape(-1, cross_attn.shape[1]).to(torch.long)
            out["c_crossattn"] = CaptionCond(cross_attn)
            out["attention_mask"] = CaptionCond(mask)
            out[region_glue.MODEL_KEY] = region_glue.region_cond(kwargs)
        pooled = kwargs.get("pooled_output", None)
        if pooled is not None and getattr(self.diffusion_model.config, "clip_text_dim", None):
            out["clip_text_pooled"] = comfy.conds.CONDRegular(pooled)
        return out


class NewBieModelConfig(comfy.supported_models.Lumina2):
    """Model config: flow matching with shift 6 and the Flux latent format, as core's Lumina2."""

    unet_config = {"image_model": "newbie_native"}
    unet_extra_config = {}
    sampling_settings = {"multiplier": 1.0, "shift": OFFICIAL.shift}
    latent_format = comfy.latent_formats.Flux
    memory_usage_factor = 1.4
    #: fp16 too: our fp16 path keeps the residual stream in float32 (no black images on GPUs without bf16).
    supported_inference_dtypes = [torch.bfloat16, torch.float16, torch.float32]

    def get_model(self, state_dict, prefix="", device=None):
        return NewBieModel(self, device=device)


def _torch_dtype(weight_dtype: str):
    """Widget value -> torch dtype (None = let ComfyUI choose); ``_fast`` only switches on fp8 matmuls."""
    return parse_dtype(weight_dtype.removesuffix("_fast"))


def load_newbie_diffusion_model(
    path: str, weight_dtype: str = "default", compile_block: bool = False, disable_dynamic: bool = False
):
    """Checkpoint path -> ComfyUI ModelPatcher around :class:`NewBieModel` (ComfyUI's loading recipe).

    The patcher remembers how it was made (``cached_patcher_init``), which is what core's multi-GPU
    nodes (MultiGPU CFG Split, Select Model Device) call to put an independent copy on another device.
    """
    dtype = _torch_dtype(weight_dtype)
    _, prefix, config = open_transformer_checkpoint(path)  # validates keys/shapes, names bad files
    files, _ = transformer_files(path)
    sd = {}
    for f in files:
        part = comfy.utils.load_torch_file(str(f), safe_load=True)
        sd.update({k[len(prefix) :]: v for k, v in part.items() if k.startswith(prefix)})

    model_config = NewBieModelConfig({**NewBieModelConfig.unet_config, **config.to_dict()})
    load_device = mm.get_torch_device()
    offload_device = mm.unet_offload_device()
    supported = list(model_config.supported_inference_dtypes)
    if dtype is None:
        dtype = mm.unet_dtype(
            model_params=comfy.utils.calculate_parameters(sd),
            supported_dtypes=supported,
            weight_dtype=comfy.utils.weight_dtype(sd),
        )
    manual_cast = mm.unet_manual_cast(dtype, load_device, supported)
    model_config.set_inference_dtype(dtype, manual_cast)
    if weight_dtype == "fp8_e4m3fn_fast":
        model_config.optimizations["fp8"] = True

    model = model_config.get_model(sd, "")
    patcher_cls = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    if disable_dynamic:
        patcher_cls = comfy.model_patcher.ModelPatcher
    patcher = patcher_cls(model, load_device=load_device, offload_device=offload_device)
    patcher.cached_patcher_init = (load_newbie_diffusion_model, (path, weight_dtype, compile_block))
    if not mm.is_device_cpu(offload_device):
        model.to(offload_device)
    if hasattr(patcher, "is_dynamic"):  # dynamic-VRAM cores (2026) load by assignment
        model.load_model_weights(sd, "", assign=patcher.is_dynamic())
    else:
        model.load_model_weights(sd, "")
    if compile_block:
        from ..newbie_core.dit.compile import compile_repeated_block

        compile_repeated_block(model.diffusion_model)
    log.info("NewBie Next-DiT loaded: %s (%d layers, weights %s)", path, config.n_layers, dtype)
    return patcher
