"""Glue between newbie_core's official sampler maths and ComfyUI's sampling machinery."""

from __future__ import annotations

import comfy.patcher_extension as pe
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch

from ..newbie_core import img2img, sampling, solvers

GUIDANCE_KEY = "newbie_official_cfg"
SAMPLER_PREFIX = "newbie_"
#: ComfyUI sampler name -> solver name in the registry (midpoint first: the official default).
NEWBIE_SAMPLERS = {
    SAMPLER_PREFIX + name: name for name in sorted(solvers.SOLVERS, key=lambda n: (n != "midpoint", n != "euler"))
}
OFFICIAL_SCHEDULER = "newbie_official"


def with_official_guidance(model, cfg_trunc: float, renorm: float):
    """Clone of ``model`` whose CFG follows the official rules: truncation at t = cfg_trunc, velocity renorm.

    Past the truncation point the guider runs with cfg 1, so ComfyUI skips the negative branch.
    """
    m = model.clone()

    def truncate_cfg(executor, x, timestep, model_options, seed):
        guider = executor.class_obj
        if sampling.cfg_active(float(timestep.flatten()[0]), cfg_trunc) or guider is None:
            return executor(x, timestep, model_options, seed)
        saved = guider.cfg
        guider.cfg = 1.0
        try:
            return executor(x, timestep, model_options, seed)
        finally:
            guider.cfg = saved

    pe.add_wrapper_with_key(
        pe.WrappersMP.PREDICT_NOISE, GUIDANCE_KEY, truncate_cfg, m.model_options, is_model_options=True
    )
    if renorm > 0:

        def renorm_cfg(args):
            x = args["input"]
            if args["cond_scale"] == 1.0 or args.get("uncond_denoised") is None:
                return x - args["cond_denoised"]
            guided = sampling.guided_denoised(
                x, args["cond_denoised"], args["uncond_denoised"], args["sigma"], args["cond_scale"], renorm
            )
            return x - guided

        m.set_model_sampler_cfg_function(renorm_cfg)
    return m


def _ksampler_function(solver):
    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = extra_args or {}

        def denoise(xx, s):
            return model(xx, s, **extra_args)

        def step(i, xx, denoised):
            if callback is not None:
                callback({"x": xx, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})

        return solvers.sample_sigmas(solver, denoise, x, sigmas, step)

    return sample


def sampler_for(name: str):
    if name in NEWBIE_SAMPLERS:
        return comfy.samplers.KSAMPLER(_ksampler_function(NEWBIE_SAMPLERS[name]))
    return comfy.samplers.sampler_object(name)


def sigmas_for(model, scheduler: str, steps: int, denoise: float = 1.0, sampler_name: str = "newbie_midpoint"):
    """Official shifted grid (shift read from the model, so ModelSampling nodes apply) or a stock schedule.

    The official grid is the chosen solver's own (dpm's starts at t = 0.001, as the demo's).
    """
    ms = model.get_model_object("model_sampling")
    total, start = img2img.denoise_schedule(steps, denoise)  # the same start as newbie_core's img2img
    if scheduler == OFFICIAL_SCHEDULER:
        shift = float(getattr(ms, "shift", 6.0))
        solver = NEWBIE_SAMPLERS.get(sampler_name, "midpoint")
        sigmas = (1.0 - sampling.solver_times(solver, total, shift)).to(torch.float32)
    else:
        sigmas = comfy.samplers.calculate_sigmas(ms, scheduler, total).cpu()
    return sigmas[start:]


def sampler_names() -> list[str]:
    return list(NEWBIE_SAMPLERS) + list(comfy.samplers.KSampler.SAMPLERS)


def scheduler_names() -> list[str]:
    return [OFFICIAL_SCHEDULER] + list(comfy.samplers.KSampler.SCHEDULERS)


def sample_on_sigmas(guided, latent, sigmas, seed, cfg, sampler_name, positive, negative, batch_index=None, **kw):
    """One sampler run on a given sigma grid with ComfyUI's own noise, previews and progress bar (``kw``: e.g.
    ``noise_mask``). Shared by NewBie Sampler and NewBie Hires Fix."""
    noise = comfy.sample.prepare_noise(latent, seed, batch_index)
    callback = latent_preview.prepare_callback(guided, len(sigmas) - 1)
    return comfy.sample.sample_custom(
        guided,
        noise,
        cfg,
        sampler_for(sampler_name),
        sigmas,
        positive,
        negative,
        latent,
        callback=callback,
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
        seed=seed,
        **kw,
    )
