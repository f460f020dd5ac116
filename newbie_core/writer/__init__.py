"""A local NewBie XML prompt writer on the Gemma the text encoder already holds.

``extend_encoder`` adds the top layer, final norm and tied head to the loaded encoder (shared
weights, only the missing tensors read); ``write_prompt`` turns a description into XML with a
KV cache, Gemma's chat template and grammar-constrained decoding, so the result always parses.
"""

from .generate import DEFAULT_MAX_NEW_TOKENS, WriterSettings, WrittenPrompt, constrained_decode, write_prompt
from .model import GemmaWriterLM, extend_encoder, file_reader, writer_for_encoder, writer_from_state
from .tokens import TokenTable

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "GemmaWriterLM",
    "TokenTable",
    "WriterSettings",
    "WrittenPrompt",
    "constrained_decode",
    "extend_encoder",
    "file_reader",
    "write_prompt",
    "writer_for_encoder",
    "writer_from_state",
]
