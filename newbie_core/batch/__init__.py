"""Batch generation: prompt lists -> one PNG per item, resumable, split over torchrun/accelerate ranks."""

from .args import add_batch_args
from .prompts import FieldSpec, PromptItem, PromptListError, read_prompt_list

__all__ = ["FieldSpec", "PromptItem", "PromptListError", "add_batch_args", "read_prompt_list", "run_batch"]


def run_batch(args, out, err, label=None) -> int:
    from .run import run_batch as _run

    return _run(args, out, err, label)
