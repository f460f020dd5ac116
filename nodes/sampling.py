"""NewBie sampler node (official defaults on ComfyUI's sampling) and the official-CFG model patch."""

from __future__ import annotations

from ..newbie_core.defaults import OFFICIAL, RANGES, SEED_LIMIT
from ._api import io, schema
from .comfy_sampling import (
    OFFICIAL_SCHEDULER,
    sample_on_sigmas,
    sampler_names,
    scheduler_names,
    sigmas_for,
    with_official_guidance,
)


def _range(name: str) -> dict:
    """Widget min/max from the one range table the standalone validator uses."""
    return {"min": float(RANGES[name].lo), "max": float(RANGES[name].hi)}


CFG_TRUNC_TIP = (
    "Official CFG truncation: guidance only while t < cfg_trunc (t = 0 is noise, 1 is the image); "
    "afterwards the negative prompt is skipped. 1.0 = guidance on every step."
)
RENORM_TIP = (
    "Official CFG renormalisation: cap the guided velocity's norm at this multiple of the positive one (0 = off)."
)


class NewBieSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="NewBieSampler",
            display_name="NewBie Sampler",
            category="NewBie/sampling",
            search_aliases=["newbie", "ksampler", "sampler"],
            description="Samples with the official NewBie recipe by default (midpoint solver on the shifted grid, CFG 5 "
            "truncated at 0.25), through ComfyUI's own sampling: progress bar, previews and interrupt work, and any "
            "stock sampler or scheduler can be picked instead.",
            inputs=[
                io.Model.Input("model", tooltip="A NewBie MODEL (this pack's loader or core's)."),
                io.Conditioning.Input(
                    "positive", tooltip="Prompt conditioning (NewBie Text Encode or CLIPTextEncode)."
                ),
                io.Conditioning.Input(
                    "negative", tooltip="Negative conditioning; an empty prompt matches the official demo."
                ),
                io.Latent.Input(
                    "latent_image", tooltip="16-channel latent, e.g. from NewBie Empty Latent or EmptySD3LatentImage."
                ),
                io.Int.Input(
                    "seed",
                    default=OFFICIAL.seed,
                    min=0,
                    max=SEED_LIMIT - 1,
                    control_after_generate=True,
                    tooltip="Noise seed (noise is made on the CPU, so results match across devices).",
                ),
                io.Int.Input(
                    "steps",
                    default=OFFICIAL.steps,
                    min=int(RANGES["steps"].lo),
                    max=int(RANGES["steps"].hi),
                    tooltip="Integration steps. The official demo's 18 grid points with midpoint = 17 steps "
                    "(two model calls each).",
                ),
                io.Float.Input(
                    "cfg", default=OFFICIAL.cfg, **_range("cfg"), step=0.1, round=0.01, tooltip="Guidance scale."
                ),
                io.Float.Input(
                    "cfg_trunc", default=OFFICIAL.cfg_trunc, **_range("cfg_trunc"), step=0.01, tooltip=CFG_TRUNC_TIP
                ),
                io.Float.Input("renorm", default=OFFICIAL.renorm, **_range("renorm"), step=0.05, tooltip=RENORM_TIP),
                io.Combo.Input(
                    "sampler_name",
                    options=sampler_names(),
                    default=f"newbie_{OFFICIAL.solver}",
                    tooltip="newbie_midpoint / newbie_euler / newbie_rk4 / newbie_dpm are the official demo's solvers "
                    "(dpm: one model call per step, midpoint two, rk4 four); the rest are ComfyUI's.",
                ),
                io.Combo.Input(
                    "scheduler",
                    options=scheduler_names(),
                    default=OFFICIAL_SCHEDULER,
                    tooltip="newbie_official: the official shifted linear grid (shift from the model, 6 by "
                    "default; ModelSamplingAuraFlow changes it). Others: ComfyUI's schedules.",
                ),
                io.Float.Input(
                    "denoise",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Fraction of the schedule to run (below 1 for img2img on an encoded latent).",
                ),
            ],
            outputs=[io.Latent.Output(tooltip="The denoised latent (decode with VAE Decode or NewBie VAE Decode).")],
        )

    @classmethod
    def execute(
        cls,
        model,
        positive,
        negative,
        latent_image,
        seed,
        steps,
        cfg,
        cfg_trunc,
        renorm,
        sampler_name,
        scheduler,
        denoise=1.0,
    ) -> io.NodeOutput:
        latent = latent_image["samples"]
        if latent.ndim != 4 or latent.shape[1] != 16:
            raise ValueError(
                f"NewBie Sampler needs a 16-channel latent [batch, 16, h, w]; got shape {list(latent.shape)}"
            )
        guided = with_official_guidance(model, cfg_trunc, renorm)
        sigmas = sigmas_for(guided, scheduler, steps, denoise, sampler_name)
        if len(sigmas) < 2:  # denoise 0: no step, the latent comes back as it went in
            return io.NodeOutput(dict(latent_image))
        samples = sample_on_sigmas(
            guided,
            latent,
            sigmas,
            seed,
            cfg,
            sampler_name,
            positive,
            negative,
            batch_index=latent_image.get("batch_index"),
            noise_mask=latent_image.get("noise_mask"),
        )
        out = dict(latent_image)
        out["samples"] = samples
        return io.NodeOutput(out)


class NewBieOfficialCFG(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="NewBieOfficialCFG",
            display_name="NewBie Official CFG",
            category="NewBie/sampling",
            search_aliases=["newbie", "renorm cfg", "cfg truncation"],
            description="Patches a MODEL so any stock sampler (KSampler, SamplerCustom) applies NewBie's official CFG "
            "truncation and velocity renormalisation.",
            inputs=[
                io.Model.Input("model", tooltip="The NewBie MODEL to patch."),
                io.Float.Input(
                    "cfg_trunc", default=OFFICIAL.cfg_trunc, **_range("cfg_trunc"), step=0.01, tooltip=CFG_TRUNC_TIP
                ),
                io.Float.Input("renorm", default=OFFICIAL.renorm, **_range("renorm"), step=0.05, tooltip=RENORM_TIP),
            ],
            outputs=[io.Model.Output(tooltip="The patched model.")],
        )

    @classmethod
    def execute(cls, model, cfg_trunc, renorm) -> io.NodeOutput:
        return io.NodeOutput(with_official_guidance(model, cfg_trunc, renorm))


NODES = [NewBieSampler, NewBieOfficialCFG]
