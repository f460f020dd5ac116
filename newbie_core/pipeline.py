"""Text-to-image without ComfyUI: text encoders -> Next-DiT flow sampling -> FLUX VAE -> PIL images."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import img2img, sampling, validation
from . import regions as regions_mod
from .defaults import OFFICIAL
from .dtypes import FLOAT8_DTYPES, parse_dtype, vae_dtype
from .errors import CheckpointError, ConfigError
from .file_kinds import LORA, UNKNOWN, classify, classify_path, refusal
from .weights import PICKLE_SUFFIXES, TensorReader, sharded_files

log = logging.getLogger("newbie")


@dataclass
class GenerationSettings:
    """Every knob of a generation; defaults are the official recipe (``newbie_core.defaults.OFFICIAL``)."""

    prompt: str
    negative_prompt: str = ""
    width: int = OFFICIAL.width
    height: int = OFFICIAL.height
    steps: int = OFFICIAL.steps
    cfg: float = OFFICIAL.cfg
    cfg_trunc: float = OFFICIAL.cfg_trunc
    renorm: float = OFFICIAL.renorm
    solver: str = OFFICIAL.solver
    shift: float = OFFICIAL.shift
    seed: int = OFFICIAL.seed
    batch_size: int = 1
    system_prompt: str = "auto"
    negative_system_prompt: str = "auto"
    # image to image (newbie_core.img2img): init image, strength (None = its default), inpaint mask, hires pass
    init_image: str | None = None
    init_image_sha256: str | None = None
    strength: float | None = None
    mask: str | None = None
    mask_feather: int = 8
    hires_scale: float = 1.0
    hires_strength: float = 0.35
    hires_steps: int | None = None
    hires_mode: str = "pixel"
    #: Allow sides above MAX_SIDE (4096) up to MAX_SIDE_LARGE; off so a typo cannot start an hour-long run.
    allow_large: bool = False
    #: Step cache threshold (0 = off): skip the main layers while the first block's residual barely changes.
    step_cache: float = 0.0
    #: "unescape": A1111-style \( \) reach the encoders as ( ); "literal": as typed (see text.ESCAPE_MODES).
    prompt_escapes: str = "unescape"
    #: Character regions {"character_N": [x0, y0, x1, y1]} in 0-1000 units; override XML <region> tags.
    regions: dict | None = None
    region_outside: str = "shared"
    region_until: float = 1.0
    region_soft_edge: float = 0.0
    region_layers: str = "all"  # main layers to mask, e.g. "0-17"
    keep_region_tags: bool = False

    def validate(self, label=validation.field_label) -> None:
        """Raises ConfigError naming the first bad field (``label`` turns field names into e.g. CLI flags)."""
        validation.check_settings(self, label)

    def region_boxes(self) -> dict:
        """``regions`` parsed: {character index: Box}; ConfigError names a bad entry."""
        from .layout import RegionError, parse_box, parse_character_name

        out = {}
        for name, box in (self.regions or {}).items():
            try:
                out[parse_character_name(name)] = parse_box(box)
            except RegionError as exc:
                raise ConfigError(f"region {name}: {exc}") from None
        return out

    def region_settings(self):
        from .layout import RegionError, parse_layers
        from .regions import RegionSettings

        try:
            layers = parse_layers(self.region_layers)
            settings = RegionSettings(
                self.region_outside, float(self.region_soft_edge), float(self.region_until), layers
            )
            settings.validate()
        except RegionError as exc:
            raise ConfigError(f"regions: {exc}") from None
        return settings

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def batch_key(self) -> str:
        """Everything but the per-sample fields (as JSON, hashable whatever the fields hold): settings with equal
        keys can share one batched forward."""
        rest = {k: v for k, v in self.to_dict().items() if k not in PER_SAMPLE_FIELDS}
        return json.dumps(rest, sort_keys=True, default=repr)


#: Fields that may differ between the samples of one batch (everything else must match).
PER_SAMPLE_FIELDS = ("prompt", "negative_prompt", "seed", "batch_size")


def _batch_items(settings: GenerationSettings, items: list[GenerationSettings] | None) -> list[GenerationSettings]:
    if items is None:
        return [settings] * settings.batch_size
    if not items:
        raise ConfigError("a batch needs at least one item")
    for i, s in enumerate(items):
        s.validate()
        if s.batch_key() != settings.batch_key():
            raise ConfigError(f"batch item {i + 1} differs from the batch in more than prompt, negative and seed")
    return items


@dataclass
class GenerationResult:
    images: list  # PIL images
    latents: torch.Tensor
    settings: GenerationSettings
    model_label: str
    loras: list[str] = dataclasses.field(default_factory=list)
    memory: object = None  # newbie_core.memory.StageMemory of this run

    def metadata(self) -> dict:
        meta = {"model": self.model_label, **self.settings.to_dict()}
        if self.loras:
            meta["loras"] = ", ".join(self.loras)
        return meta


class NewBiePipeline:
    def __init__(
        self,
        transformer,
        text_encoders,
        vae,
        device="cpu",
        label: str = "NewBie-image-Exp0.1",
        offload_text_encoders: bool = False,
    ):
        self.transformer = transformer
        self.text_encoders = text_encoders
        self.vae = vae
        self.device = torch.device(device)
        self.label = label
        #: Keep Gemma and Jina (about 9 GB in bf16) in CPU memory except while encoding.
        self.offload_text_encoders = offload_text_encoders
        self.profile = None  # a newbie_core.memory.MemoryProfile once apply_profile ran
        #: LoRAs merged into the transformer, as ``name:strength`` (recorded in the PNG metadata).
        self.loras: list[str] = []

    # ------------------------------------------------------------------ construction
    @classmethod
    def tiny(cls, device="cpu") -> NewBiePipeline:
        """The embedded smoke-test model (seeded random toy weights; see ``newbie_core.tiny``)."""
        from . import tiny

        device = validation.device("device", device)
        pipe = cls(tiny.tiny_transformer(), tiny.tiny_text_encoders(), tiny.tiny_vae(), device=device, label=tiny.LABEL)
        return pipe.to(device)

    @classmethod
    def from_models_dir(
        cls, models_dir, device="cpu", dtype=None, offload_text_encoders=False, vram=None
    ) -> NewBiePipeline:
        """Load real weights from a ComfyUI ``models/`` folder or the official HF layout (``~`` is expanded).

        The device and dtype are checked before any file is opened. ``vram`` (6, 8, 12 or 24 GB) applies a
        :mod:`newbie_core.memory` profile. The VAE decodes in fp32 for fp16 weights (fp16 overflows there) and
        for bf16 on CPUs without native bf16 kernels (``dtypes.vae_dtype``).
        """
        from . import memory
        from .dit import load_transformer
        from .text import load_text_encoders
        from .vae import load_vae

        device = validation.device("device", device)
        profile = memory.get_profile(vram)
        dtype = parse_dtype(dtype) or default_compute_dtype(device)
        found = find_model_files(Path(str(models_dir)).expanduser())
        offload = offload_text_encoders or bool(profile and profile.offload_text_encoders)
        staged = "cpu" if profile and (profile.stream_dit or profile.stream_text_encoders) else device
        storage = (profile and profile.dit_storage) or dtype
        compute = torch.bfloat16 if dtype in FLOAT8_DTYPES else dtype  # fp8 is a storage format for the DiT only
        transformer = load_transformer(found["transformer"], dtype=storage, device=staged, compute_dtype=compute)
        te_device = "cpu" if offload or staged == "cpu" else device
        encoders = load_text_encoders(found["gemma"], found["jina"], dtype=compute, device=te_device)
        vae = load_vae(found["vae"], dtype=vae_dtype(dtype, device), device=device)
        pipe = cls(transformer, encoders, vae, device=device, offload_text_encoders=offload)
        if profile is not None:
            memory.apply_profile(pipe, profile)
        return pipe

    def apply_lora(self, path, strength: float = 1.0, block_strengths=None):
        """Merge a LoRA (any format newbie_core.lora reads) into the transformer; returns its plan and report."""
        from .lora import apply_lora

        plan = apply_lora(self.transformer, path, strength, block_strengths)
        self.loras.append(f"{Path(path).name}:{strength:g}")
        return plan

    def to(self, device) -> NewBiePipeline:
        self.device = torch.device(device)
        encoders = () if self.offload_text_encoders else (self.text_encoders.gemma, self.text_encoders.jina)
        for m in (self.transformer, *encoders, self.vae):
            m.to(self.device)
        return self

    def _encode(self, gemma_rows, jina_rows):
        from .memory import place

        enc = self.text_encoders
        if not self.offload_text_encoders:
            return enc.encode_ids(gemma_rows, jina_rows)
        try:
            place(enc.gemma, self.device)
            place(enc.jina, self.device)
            return enc.encode_ids(gemma_rows, jina_rows)
        finally:
            place(enc.gemma, "cpu")
            place(enc.jina, "cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        settings: GenerationSettings,
        progress: Callable[[int, int], None] | None = None,
        items: list[GenerationSettings] | None = None,
    ) -> GenerationResult:
        """``items``: one batch of different prompts/negatives/seeds sharing ``settings.batch_key()`` (one forward
        per step for all); each item's noise is its own seed's, as in a single run. Without it, ``batch_size``
        copies of ``settings``."""
        settings.validate()
        if settings.init_image:  # the PNG records which file it started from
            settings = dataclasses.replace(settings, init_image_sha256=img2img.file_sha256(settings.init_image))
        from .dit.cpu_pack import packed_for_cpu
        from .dit.step_cache import StepCache
        from .memory import StageMemory
        from .text.conditioning import gemma_text

        own_seeds = items is not None
        items = _batch_items(settings, items)
        b = len(items)
        enc = self.text_encoders
        stages = StageMemory(self.device)

        layouts = [self._layout(s) for s in items]  # per item: its own prompt, regions and spans
        gemma_rows, _ = enc.gemma_ids(
            [gemma_text(layout.text, settings.system_prompt) for layout, _ in layouts]
            + [gemma_text(negative, settings.negative_system_prompt) for _, negative in layouts]
        )
        for row, (layout, _) in zip(gemma_rows, layouts):
            if layout.boxes and row != layout.gemma_ids:  # spans were computed on other tokens
                raise RuntimeError("token spans do not match the encoded prompt")
        if not own_seeds and layouts[0][0].boxes:
            settings = dataclasses.replace(settings, regions=regions_mod.boxes_to_json(layouts[0][0].boxes))
        jina_rows = enc.jina_ids([layout.text for layout, _ in layouts] + [negative for _, negative in layouts])
        with stages.stage("encode"):
            conds = self._encode(gemma_rows, jina_rows)
        caps = conds.hidden.to(self.device)
        masks = conds.mask.to(self.device)
        pooled = conds.pooled.to(self.device)
        dit = self.transformer

        samples = [layout.sample() for layout, _ in layouts]
        regional = any(sample is not None for sample in samples)
        both = regions_mod.RegionalAttention(samples + [None] * b, settings.region_settings()) if regional else None
        cond_only = regions_mod.RegionalAttention(samples, settings.region_settings()) if regional else None

        def model(x, t, with_uncond):
            active = both is not None and both.active_at(float(t[0]))
            if with_uncond:
                regions = both if active else None  # the uncond half stays unmasked
                out = dit(torch.cat([x, x]), torch.cat([t, t]), caps, masks, pooled, regions=regions).float()
                return out[:b], out[b:]
            n = int(masks[:b].sum(1).max())
            regions = cond_only if active else None
            return dit(x, t, caps[:b, :n], masks[:b, :n], pooled[:b], regions=regions).float(), None

        def velocity(x, t):
            return sampling.cfg_velocity(model, x, t, settings.cfg, settings.cfg_trunc, settings.renorm)

        inputs = img2img.load_inputs(settings)
        if own_seeds:
            noise = torch.cat([sampling.initial_noise(1, s.height, s.width, s.seed) for s in items])
        else:
            noise = sampling.initial_noise(b, settings.height, settings.width, settings.seed)
        noise = noise.to(self.device)
        callback = None if progress is None else (lambda i, n, _x: progress(i, n))
        saved_runner = dit.layer_runner
        if settings.step_cache > 0:
            dit.layer_runner = StepCache(settings.step_cache)
        packing = packed_for_cpu(dit) if self.device.type == "cpu" else contextlib.nullcontext()
        try:
            with stages.stage("sample"), packing:
                if inputs is None:
                    times = sampling.solver_times(settings.solver, settings.steps, settings.shift)
                    latents = sampling.integrate(velocity, noise, times, settings.solver, callback)
                else:
                    latents = self._from_image(inputs, noise, velocity, settings, callback)
                if settings.hires_scale > 1.0:
                    latents = self._hires(latents, velocity, settings, callback)
        finally:
            dit.layer_runner = saved_runner
        with stages.stage("decode"):
            pixels = self.vae.decode_dit(latents, tile=self._decode_tile(latents))
        if inputs is not None and inputs.mask is not None:
            soft = img2img.feathered(inputs.mask, settings.mask_feather).to(pixels.device)
            pixels = img2img.paste_back(pixels, inputs.pixels.to(pixels.device), soft)
        return GenerationResult(to_pil(pixels), latents.cpu(), settings, self.label, list(self.loras), memory=stages)

    def _layout(self, settings: GenerationSettings):
        """The prompt's regions (XML merged with ``settings.regions``) and both texts for the encoders."""
        from .layout import RegionError
        from .text.conditioning import apply_escapes, system_prompt_for
        from .xml_prompt import XMLPromptError, extract_regions

        enc = self.text_encoders
        try:
            layout = regions_mod.prompt_layout(
                enc.gemma_tokenizer,
                settings.prompt,
                lambda text: system_prompt_for(text, settings.system_prompt),
                settings.region_boxes(),
                settings.keep_region_tags,
                enc.gemma_max_tokens,
                prepare=lambda text: apply_escapes(text, settings.prompt_escapes),
            )
            negative, _ = extract_regions(settings.negative_prompt)
        except (RegionError, XMLPromptError) as exc:
            raise ConfigError(f"prompt: {exc}") from None
        return layout, apply_escapes(negative, settings.prompt_escapes)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] -> DiT latents; tiles beyond 2048x2048 px, like decoding."""
        tile = None if pixels.shape[-1] * pixels.shape[-2] <= 2048 * 2048 else 1024
        return self.vae.encode_pixels(pixels.to(self.device), tile=tile)

    def _from_image(self, inputs, noise, velocity, settings, callback):
        """img2img / inpainting: start on the noised init latent at the strength's point of the solver's grid."""
        b = noise.shape[0]
        x0 = self.encode_image(inputs.pixels).expand(b, -1, -1, -1)
        strength = img2img.effective_strength(settings)
        times = img2img.strength_times(settings.steps, strength, settings.shift, settings.solver)
        x = img2img.noised(x0, noise, float(times[0]))
        if inputs.mask is None:
            return sampling.integrate(velocity, x, times, settings.solver, callback)
        m = img2img.latent_mask(img2img.feathered(inputs.mask, settings.mask_feather)).to(self.device)
        m = m.expand(b, -1, -1, -1)
        pinned = img2img.pinned_velocity(velocity, x0, noise, m)
        return sampling.integrate(pinned, x, times, settings.solver, callback)

    def _hires(self, latents, velocity, settings, callback):
        """Second pass at ``hires_scale`` times the size, low strength, shift scaled for the larger token count."""
        w, h = img2img.hires_size(settings.width, settings.height, settings.hires_scale)
        if settings.hires_mode == "latent":
            x0 = img2img.upscale_latents(latents, w, h)
        else:
            pixels = self.vae.decode_dit(latents, tile=self._decode_tile(latents))
            x0 = self.encode_image(img2img.upscale_pixels(pixels, w, h))
        noise = sampling.initial_noise(latents.shape[0], h, w, (settings.seed + 1) & 0xFFFF_FFFF_FFFF_FFFF)
        shift = img2img.hires_shift(settings.shift, settings.width, settings.height, w, h)
        steps = settings.hires_steps or settings.steps
        times = img2img.strength_times(steps, settings.hires_strength, shift, settings.solver)
        x = img2img.noised(x0, noise.to(self.device), float(times[0]))
        return sampling.integrate(velocity, x, times, settings.solver, callback)

    def _decode_tile(self, latents: torch.Tensor) -> int | None:
        """Whole-image decode up to 2048x2048 px, tiles beyond (bounded memory, seamless blend); profiles tile sooner."""
        profile_tile = self.profile.vae_tile if self.profile is not None else None
        if profile_tile and max(latents.shape[-2:]) > profile_tile:
            return profile_tile
        return None if latents.shape[-1] * latents.shape[-2] <= 256 * 256 else 128


def default_compute_dtype(device) -> torch.dtype:
    """bf16 on GPUs that have it, fp16 on those that do not (RTX 20xx, GTX 16xx, T4, V100), fp32 on the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def to_pil(pixels: torch.Tensor) -> list:
    from PIL import Image

    arr = (pixels.permute(0, 2, 3, 1).cpu().float().numpy() * 255.0).round().clip(0, 255).astype("uint8")
    return [Image.fromarray(a) for a in arr]


# ------------------------------------------------------------------------------ model discovery


ROLES = {
    "transformer": "NewBie diffusion model",
    "gemma": "Gemma3-4B-it text encoder",
    "jina": "Jina CLIP v2 text encoder",
    "vae": "FLUX VAE (ae.safetensors)",
}
_SEARCH_SUFFIXES = (".safetensors", ".gguf", *PICKLE_SUFFIXES)
_NOT_SAFETENSORS = (".gguf", *PICKLE_SUFFIXES)


def _candidates(root: Path):
    """(path to report, path to load, shapes-or-None, error) for every weight file or sharded set under root."""
    indexed: set[Path] = set()
    for index in sorted(root.rglob("*.safetensors.index.json")):
        if len(index.relative_to(root).parts) > 4:
            continue
        try:
            shards = sharded_files(index)
            shapes = {}
            for shard in shards:
                shapes.update({k: v.shape for k, v in TensorReader.open([shard]).tensors.items()})
        except CheckpointError as exc:
            yield index, index.parent, None, str(exc)
            continue
        indexed.update(shards)
        yield index.parent, index.parent, shapes, None
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in _SEARCH_SUFFIXES and p.is_file()):
        if len(path.relative_to(root).parts) > 4 or path in indexed:
            continue
        if path.suffix.lower() in _NOT_SAFETENSORS:
            yield path, path, {}, None
            continue
        try:
            shapes = {k: v.shape for k, v in TensorReader.open([path]).tensors.items()}
        except CheckpointError as exc:
            yield path, path, None, str(exc)
            continue
        yield path, path, shapes, None


def find_model_files(models_dir) -> dict[str, Path]:
    """Find the four weight sets under ``models_dir`` by reading safetensors headers (no tensor data).

    Every file is classified by the file-kind table; when something is missing, the error lists what was
    seen: files found for other roles, and files skipped (pickles, Lumina-2 or other models, unreadable).
    """
    root = Path(models_dir)
    if not root.is_dir():
        raise CheckpointError(f"{root}: models folder not found")
    found: dict[str, Path] = {}
    seen: list[str] = []
    for shown, target, shapes, error in _candidates(root):
        name = shown.relative_to(root).as_posix() if shown != root else shown.name
        if error is not None:
            seen.append(f"{name} (skipped: unreadable)")
            log.warning("skipping %s", error)
            continue
        kind = classify_path(shown)[0] if shown.suffix.lower() in _NOT_SAFETENSORS else classify(shapes)
        if kind.role in ROLES:
            if kind.role in found:
                seen.append(f"{name} ({kind.label}, not used: {found[kind.role].name} was found first)")
                log.info("%s: another %s beside %s; using the first", name, kind.label, found[kind.role])
                continue
            found[kind.role] = target
            seen.append(f"{name} ({kind.label})")
        elif kind is LORA:
            seen.append(f"{name} (LoRA)")
        elif kind is UNKNOWN:
            seen.append(f"{name} (skipped: {kind.label})")
        else:
            seen.append(f"{name} (skipped: {refusal(kind, shapes)})")
    missing = [k for k in ROLES if k not in found]
    if missing:
        listing = "; ".join(seen[:20]) + (f"; ... (+{len(seen) - 20} more)" if len(seen) > 20 else "")
        raise CheckpointError(
            f"{root}: could not find "
            + ", ".join(ROLES[m] for m in missing)
            + f". Seen: {listing or 'no weight files'}"
        )
    return found


def png_metadata(result: GenerationResult) -> dict[str, str]:
    meta = result.metadata()
    text = f"{meta['prompt']}\nNegative prompt: {meta['negative_prompt']}\n" + ", ".join(
        f"{k}: {v}" for k, v in meta.items() if k not in ("prompt", "negative_prompt")
    )
    return {"parameters": text, "newbie": json.dumps(meta, ensure_ascii=False)}
