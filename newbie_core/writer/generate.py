"""The generation loop: chat prompt, KV-cached decoding, grammar-constrained sampling, a checked result."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from ..text.tokenizers import Tokenizer
from ..xml_prompt import parse
from ..xml_prompt.parser import Positions
from . import grammar
from .constrained import GrammarDecoder, choose_token
from .model import GemmaWriterLM
from .prompting import COMPLETE_INSTRUCTION, INSTRUCTION, chat_prompt_ids
from .tokens import TokenTable

DEFAULT_MAX_NEW_TOKENS = 512
MAX_NEW_TOKENS_LIMIT = 4096


@dataclass
class WriterSettings:
    """Sampling settings; the same seed and settings give the same text on the same device."""

    seed: int = 0
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.7
    top_p: float = 0.95
    use_cache: bool = True

    def validate(self, label=str) -> None:
        """The writer's one set of rules; ``label`` turns a field name into what the caller calls it (a CLI flag)."""
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise ConfigError(f"{label('max_new_tokens')} must be 1..{MAX_NEW_TOKENS_LIMIT}, got {self.max_new_tokens}")
        if not 0.0 <= self.temperature <= 10.0:
            raise ConfigError(f"{label('temperature')} must be 0..10 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"{label('top_p')} must be in (0, 1], got {self.top_p}")
        if not 0 <= self.seed < 2**64:
            raise ConfigError(f"{label('seed')} must be 0..2**64-1, got {self.seed}")


@dataclass
class WrittenPrompt:
    text: str
    token_ids: list[int] = field(default_factory=list)
    prompt_tokens: int = 0


def partial_state(partial: str):
    """The automaton state after a user's partial prompt, or a ConfigError saying where it cannot go on."""
    state = grammar.START
    for i, ch in enumerate(partial):
        nxt = grammar.step(state, ch)
        if nxt is None:
            line, col = Positions(partial)(i)
            raise ConfigError(
                f"partial prompt, line {line}, column {col}: the writer cannot continue from {ch!r} here; "
                f"expected {grammar.describe_expected(state)}"
            )
        state = nxt
    return state


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed % 2**63)


def constrained_decode(next_logits, table: TokenTable, settings: WriterSettings, state=grammar.START) -> list[int]:
    """Sample tokens from ``next_logits(new_token_or_None) -> logits`` until the document is complete."""
    decoder = GrammarDecoder(table, settings.max_new_tokens, state)
    gen = _generator(settings.seed)
    tokens: list[int] = []
    logits = next_logits(None)
    while not decoder.done:
        tok, state = choose_token(decoder, logits, settings.temperature, settings.top_p, gen)
        decoder.accept(tok, state)
        tokens.append(tok)
        if decoder.done:
            break
        logits = next_logits(tok)
    return tokens


def write_prompt(
    lm: GemmaWriterLM,
    tokenizer: Tokenizer,
    description: str,
    settings: WriterSettings | None = None,
    partial: str = "",
    instruction: str = INSTRUCTION,
) -> WrittenPrompt:
    """NewBie XML for ``description`` (optionally continuing ``partial``); always parses with no warnings."""
    settings = settings or WriterSettings()
    settings.validate()
    state = partial_state(partial)
    table = TokenTable.for_tokenizer(tokenizer, lm.vocab_size)
    if partial:
        instruction += "\n" + COMPLETE_INSTRUCTION
    prompt = chat_prompt_ids(tokenizer, description, instruction) + (tokenizer.encode_plain(partial) if partial else [])
    if state == grammar.DONE:
        return WrittenPrompt(partial, [], len(prompt))
    ids = torch.tensor([prompt], dtype=torch.long)
    cache = lm.new_cache() if settings.use_cache else None

    def next_logits(tok):
        nonlocal ids
        if tok is None:
            return lm.next_logits(ids, cache)
        new = torch.tensor([[tok]], dtype=torch.long)
        ids = torch.cat([ids, new], dim=1)
        return lm.next_logits(new if cache is not None else ids, cache)

    tokens = constrained_decode(next_logits, table, settings, state)
    text = partial + "".join(table.texts[t] for t in tokens)
    parsed = parse(text)  # the grammar promises this; a failure here is a bug, never a silent bad prompt
    if parsed.warnings:
        raise RuntimeError(f"internal error: the writer produced a prompt with warnings: {parsed.warnings[0]}")
    return WrittenPrompt(text, tokens, len(prompt))
