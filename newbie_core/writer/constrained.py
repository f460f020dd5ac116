"""Grammar-constrained token choice: only tokens that keep the text a valid prompt prefix.

A token is allowed when its text carries the automaton from the current state to a live one
*and* the shortest way to finish from there still fits in the tokens left. Every character the
shortest completion needs has a one-character token (checked up front), so some allowed token
always exists and the document always ends complete within the budget.

Finding the allowed tokens is cheap on a 262k vocabulary: where the grammar admits only a few
characters (between elements, inside tags, escapes) they are enumerated from the sorted token
index by prefix; inside free value text (where almost every token is allowed) candidates are
checked one by one in the order the sampler proposes them, so a step checks a handful of tokens
rather than the whole vocabulary.

Sampling semantics: top-p selects the nucleus of the model's own distribution, the grammar removes
what it forbids, and the rest is sampled in proportion to its probability; if the grammar forbids
the whole nucleus, the most probable allowed token is taken. Temperature 0 is greedy.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from . import grammar
from .tokens import TokenTable

_SMALL_RANGE = 256
_REJECTION_TRIES = 32


class GrammarDecoder:
    """Tracks the automaton state and token budget of one generation."""

    def __init__(self, table: TokenTable, budget: int, state=grammar.START):
        self.table = table
        self.filler = self._pick_filler(table)
        self._check_alphabet(table)
        self.state = state
        self.budget = budget
        need = self.min_tokens(state)
        if need > budget:
            raise ConfigError(
                f"max_new_tokens {budget} is too small: the shortest complete prompt from here needs {need} tokens"
            )

    @staticmethod
    def _pick_filler(table: TokenTable) -> str:
        for ch in "abcdefghijklmnopqrstuvwxyz0123456789":
            if table.single_char_ids(ch):
                return ch
        raise ConfigError("the tokenizer has no single-letter tokens; the prompt writer cannot bound its output")

    @staticmethod
    def _check_alphabet(table: TokenTable) -> None:
        names = "".join(grammar.tag_options(("top", 1), None)) + "".join(grammar.CHARACTER_FIELDS)
        names += "".join(grammar.GENERAL_FIELDS) + "0123456789</>;&" + "".join(grammar.ENTITIES)
        missing = sorted({ch for ch in names if not table.single_char_ids(ch)})
        if missing:
            raise ConfigError(f"the tokenizer has no single-character token for {missing}; the writer needs them")

    def min_tokens(self, state) -> int:
        return len(grammar.completion(state, self.filler))

    @property
    def done(self) -> bool:
        return self.state == grammar.DONE

    def check(self, token: int, left: int):
        """The state after ``token`` when it is allowed with ``left`` tokens remaining after it, else None."""
        text = self.table.texts[token] if 0 <= token < len(self.table.texts) else None
        if text is None:
            return None
        state = grammar.advance(self.state, text)
        if state is None or self.min_tokens(state) > left:
            return None
        return state

    def allowed(self) -> dict[int, object] | None:
        """Every allowed token with its next state, or None when the set is open-ended (value text).

        Where free value text could absorb a token but the budget has no room for it, only the
        shortest completion's next character is followed (a subset that is still never empty).
        """
        left = self.budget - 1
        out: dict[int, object] = {}
        stack = [(self.state, "")]
        table = self.table
        while stack:
            state, prefix = stack.pop()
            lo, hi = table.prefix_range(prefix) if prefix else (0, len(table.sorted_ids))
            if lo == hi:
                continue
            chars = grammar.next_chars(state)
            if chars is None:
                if self.min_tokens(state) <= left:  # value text still fits: open-ended here
                    if not prefix or hi - lo > _SMALL_RANGE:
                        return None
                else:
                    chars = grammar.completion(state, self.filler)[:1]
            if prefix and hi - lo <= _SMALL_RANGE:
                for tok in table.sorted_ids[lo:hi]:
                    nxt = self.check(tok, left)
                    if nxt is not None:
                        out[tok] = nxt
                continue
            for tok in table.by_text.get(prefix, []) if prefix else []:
                nxt = self.check(tok, left)
                if nxt is not None:
                    out[tok] = nxt
            for ch in chars:
                nxt_state = grammar.step(state, ch)
                if nxt_state is not None:
                    stack.append((nxt_state, prefix + ch))
        return out

    def accept(self, token: int, state) -> None:
        self.state = state
        self.budget -= 1


def _nucleus(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted probabilities, their ids) of the smallest top set holding ``top_p`` of the mass."""
    p, ids = torch.sort(probs, descending=True)
    before = torch.cumsum(p, 0) - p
    k = max(1, int((before < top_p).sum()))
    return p[:k], ids[:k]


def choose_token(
    decoder: GrammarDecoder,
    logits: torch.Tensor,
    temperature: float,
    top_p: float,
    generator: torch.Generator,
) -> tuple[int, object]:
    """One allowed token (and its state) from ``logits`` [vocab] under the semantics in the module doc."""
    logits = logits.detach().float().cpu()
    vocab = min(len(logits), len(decoder.table.texts))
    logits = logits[:vocab]
    left = decoder.budget - 1
    allowed = decoder.allowed()
    if allowed is not None and not allowed:
        raise RuntimeError(f"internal error: the grammar allows no token in state {decoder.state!r}")

    if temperature <= 0:
        if allowed is not None:
            ids = torch.tensor(sorted(allowed))
            tok = int(ids[torch.argmax(logits[ids])])
            return tok, allowed[tok]
        for tok in torch.argsort(logits, descending=True).tolist():
            state = decoder.check(tok, left)
            if state is not None:
                return tok, state
        raise RuntimeError("internal error: no allowed token")

    probs = torch.softmax(logits / temperature, dim=0)
    p, ids = _nucleus(probs, top_p)
    if allowed is not None:
        keep = torch.tensor([int(i) in allowed for i in ids.tolist()], dtype=torch.bool)
        if keep.any():
            pick = torch.multinomial(p * keep, 1, generator=generator)
            tok = int(ids[pick])
            return tok, allowed[tok]
        best = torch.tensor(sorted(allowed))
        tok = int(best[torch.argmax(logits[best])])
        return tok, allowed[tok]

    weights = p.clone()
    for _ in range(_REJECTION_TRIES):  # exact: a rejected draw is removed and the rest renormalised
        if not bool(weights.any()):
            break
        pick = int(torch.multinomial(weights, 1, generator=generator))
        state = decoder.check(int(ids[pick]), left)
        if state is not None:
            return int(ids[pick]), state
        weights[pick] = 0
    states = {}
    for j in torch.nonzero(weights).flatten().tolist():
        state = decoder.check(int(ids[j]), left)
        if state is None:
            weights[j] = 0
        else:
            states[j] = state
    if states:
        pick = int(torch.multinomial(weights, 1, generator=generator))
        return int(ids[pick]), states[pick]
    for tok in torch.argsort(logits, descending=True).tolist():
        state = decoder.check(tok, left)
        if state is not None:
            return tok, state
    raise RuntimeError("internal error: no allowed token")
