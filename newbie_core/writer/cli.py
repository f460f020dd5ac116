"""``python -m newbie_core write "TEXT"``: a description in, NewBie XML out (on the tiny default too)."""

from __future__ import annotations

import argparse

from ..errors import ConfigError, NewBieError
from .generate import DEFAULT_MAX_NEW_TOKENS, MAX_NEW_TOKENS_LIMIT, WriterSettings, partial_state

EXIT_BAD_INPUT = 2


def add_write_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "write",
        help="turn a description into NewBie XML with the Gemma text encoder (output always parses)",
        description="Writes a NewBie XML prompt with grammar-constrained decoding on the Gemma the pipeline loads. "
        "Without --models-dir it runs the embedded tiny random model: the words are noise, the structure is valid.",
    )
    p.add_argument("text", help="what the picture should show, in any words")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (same seed, same text)")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help=f"token budget; the prompt is always closed within it (1..{MAX_NEW_TOKENS_LIMIT})",
    )
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy; higher = more varied (max 10)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus size, in (0, 1]")
    p.add_argument("--complete", default="", help="a partial XML prompt to continue instead of starting fresh")
    p.add_argument("--models-dir", help="ComfyUI models/ folder or the official HF folder; omit for the tiny model")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, help="weight dtype for real models: bf16, fp16 or fp32")
    return p


def _settings(args) -> WriterSettings:
    """Validated before anything loads; each error names its flag."""
    if not args.text.strip():
        raise ConfigError("the description TEXT is empty")
    settings = WriterSettings(args.seed, args.max_new_tokens, args.temperature, args.top_p)
    settings.validate(label=lambda field: "--" + field.replace("_", "-"))
    partial_state(args.complete)
    return settings


def _load(args, err):
    import torch

    if not args.models_dir:
        from .tiny import tiny_writer

        print("no --models-dir given: using the embedded tiny smoke-test model (random weights, not NewBie)", file=err)
        return tiny_writer()
    from ..pipeline import find_model_files
    from ..text.gemma import load_gemma
    from ..weights import parse_dtype
    from .model import writer_for_encoder

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    path = find_model_files(args.models_dir)["gemma"]
    print(f"loading Gemma from {path} ...", file=err)
    encoder, tokenizer = load_gemma(path, dtype=parse_dtype(args.dtype), device=device)
    return writer_for_encoder(encoder), tokenizer


def cmd_write(args, out, err) -> int:
    from .generate import write_prompt

    try:
        settings = _settings(args)
        lm, tokenizer = _load(args, err)
        result = write_prompt(lm, tokenizer, args.text, settings, partial=args.complete)
    except NewBieError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_BAD_INPUT
    print(result.text, file=out)
    return 0
