"""One table of "what kind of file is this", read from safetensors key names (never tensor data).

Every loader, the pipeline's model-folder search and the error hints ask this module, so a file is
recognised (or refused) the same way everywhere: NewBie's DiT, a Lumina-2 DiT (same family, not
loadable as NewBie), Gemma3, Jina CLIP v2, jina-embeddings-v3 (a different model with the same
shapes), the FLUX VAE, LoRA files, and pickles (never unpickled).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError
from .weights import PICKLE_SUFFIXES, TensorReader


@dataclass(frozen=True)
class FileKind:
    name: str
    label: str
    #: The pipeline role this kind fills (``transformer``, ``gemma``, ``jina``, ``vae``, ``lora``) or None.
    role: str | None
    #: ComfyUI ``models/`` subfolder it belongs in ("" when it has no use here).
    folder: str
    #: Why it cannot be used, when ``role`` is None.
    refusal: str = ""


NEWBIE_DIT = FileKind("newbie_dit", "NewBie diffusion transformer", "transformer", "diffusion_models")
LUMINA2_DIT = FileKind(
    "lumina2_dit",
    "Lumina-2 diffusion transformer",
    None,
    "diffusion_models",
    "it is a Lumina-Image-2.0 model (no clip_text_pooled_proj), not NewBie",
)
LUMINA2_DIFFUSERS = FileKind(
    "lumina2_diffusers",
    "diffusers Lumina2Transformer2DModel",
    None,
    "diffusion_models",
    "diffusers key names; use the original-key NewBie release",
)
GEMMA3 = FileKind("gemma3", "Gemma3 text encoder", "gemma", "text_encoders")
JINA_CLIP_V2 = FileKind("jina_clip_v2", "Jina CLIP v2 text encoder", "jina", "text_encoders")
JINA_V3 = FileKind(
    "jina_embeddings_v3",
    "jina-embeddings-v3",
    None,
    "text_encoders",
    "it is jina-embeddings-v3 (five task adapters), a different model from Jina CLIP v2",
)
FLUX_VAE = FileKind("flux_vae", "FLUX VAE (16 latent channels)", "vae", "vae")
OTHER_VAE = FileKind("other_vae", "VAE", None, "vae", "its latent has {channels} channels, NewBie needs FLUX's 16")
LORA = FileKind("lora", "LoRA", "lora", "loras")
PICKLE = FileKind("pickle", "pickled checkpoint", None, "", "pickles are never loaded (unpickling can run code)")
GGUF = FileKind("gguf", "GGUF file", None, "", "GGUF files are not loaded by this pack (use safetensors)")
UNKNOWN = FileKind("unknown", "unrecognised safetensors file", None, "", "no key pattern of a model NewBie uses")

KINDS = (
    NEWBIE_DIT,
    LUMINA2_DIT,
    LUMINA2_DIFFUSERS,
    GEMMA3,
    JINA_CLIP_V2,
    JINA_V3,
    FLUX_VAE,
    OTHER_VAE,
    LORA,
    PICKLE,
    GGUF,
)

_LORA_KEY = re.compile(
    r"\.(lora_A|lora_B|lora_up|lora_down|lokr_w1|lokr_w2|lokr_w1_a|lokr_w2_a|hada_w1_a|hada_w2_a|diff)"
    r"(\.default)?(\.weight)?$"
)


def jina_prefix(keys) -> str | None:
    """The prefix in front of ``embeddings.word_embeddings`` in a Jina-architecture file, or None."""
    for key in keys:
        i = key.find("embeddings.word_embeddings.")
        if i >= 0 and any(".mixer.Wqkv." in k for k in keys):
            return key[:i]
    return None


def jina_adapter_tasks(shapes: dict[str, tuple]) -> int:
    """How many task adapters a Jina file carries (first dim of its parametrize ``lora_A``), 0 when none."""
    for key, shape in shapes.items():
        if key.endswith(".parametrizations.weight.0.lora_A") and shape:
            return int(shape[0])
    return 0


def classify(shapes: dict[str, tuple]) -> FileKind:
    """The kind of a safetensors file from its key names (and a few shapes)."""
    keys = shapes.keys()
    if any(_LORA_KEY.search(k) and ".parametrizations." not in k for k in keys) and not any(
        k.endswith("cap_embedder.1.weight") for k in keys
    ):
        return LORA
    if any(k.endswith("cap_embedder.1.weight") for k in keys):
        return NEWBIE_DIT if any(k.endswith("clip_text_pooled_proj.0.weight") for k in keys) else LUMINA2_DIT
    if any(k.startswith("time_caption_embed.") for k in keys):
        return LUMINA2_DIFFUSERS
    if any(k.endswith("embed_tokens.weight") for k in keys) and any("self_attn.q_norm" in k for k in keys):
        return GEMMA3
    prefix = jina_prefix(keys)
    if prefix is not None:
        if prefix == "roberta." or jina_adapter_tasks(shapes) > 1:
            return JINA_V3
        return JINA_CLIP_V2
    conv_in = next((s for k, s in shapes.items() if k.endswith("decoder.conv_in.weight")), None)
    if conv_in is not None:
        return FLUX_VAE if len(conv_in) > 1 and conv_in[1] == 16 else OTHER_VAE
    return UNKNOWN


def refusal(kind: FileKind, shapes: dict[str, tuple] | None = None) -> str:
    """The reason a kind cannot be used, with its details filled in."""
    if kind is OTHER_VAE and shapes:
        conv_in = next((s for k, s in shapes.items() if k.endswith("decoder.conv_in.weight")), (0, "?"))
        return kind.refusal.format(channels=conv_in[1])
    return kind.refusal


def classify_path(path: Path) -> tuple[FileKind, dict[str, tuple]]:
    """(kind, shapes) of a file; pickles by suffix, without opening them. Unreadable files raise CheckpointError."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return PICKLE, {}
    if path.suffix.lower() == ".gguf":
        return GGUF, {}
    reader = TensorReader.open([path])
    shapes = {k: v.shape for k, v in reader.tensors.items()}
    return classify(shapes), shapes


def wrong_file_hint(expected: FileKind, shapes: dict[str, tuple]) -> str:
    """`` (it is the X; put it in models/Y)`` when a loader was handed another known kind, else ""."""
    kind = classify(shapes)
    if kind is expected or kind is UNKNOWN:
        return ""
    if kind.role in ("gemma", "jina") and expected.role in ("gemma", "jina"):
        return f" (it is the {kind.label} file; the two inputs are swapped)"
    if kind.role is None:
        return f" (it is a {kind.label}: {refusal(kind, shapes)})"
    return f" (it is a {kind.label}; put it in models/{kind.folder})"


def require(expected: FileKind, shapes: dict[str, tuple], where) -> None:
    """Refuse, naming the file, anything that is not ``expected`` but another kind the table knows."""
    kind = classify(shapes)
    if kind is expected or kind is UNKNOWN:
        return
    if kind.role is None:
        raise CheckpointError(f"{where}: this is {kind.label}, not a {expected.label}: {refusal(kind, shapes)}")
    raise CheckpointError(f"{where}: this is not a {expected.label}{wrong_file_hint(expected, shapes)}")
