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
the whole nucleus, the most probable allowed token is taken. Temperature 0 is greedy. In free text
the allowed part of the nucleus is sampled by rejection (exact); only if 32 draws in a row are
refused is the sample taken among the allowed tokens of the nucleus' 4096 most likely ids.

Cost per token (``benchmarks/bench_writer_constraint.py``, 262k synthetic vocabulary): a few ms
for a trained model's peaked distribution; a flat one (an untrained model, a high temperature)
pays for a few dozen passes over the vocabulary to find its nucleus, still with no full sort.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from . import grammar
from .tokens import TokenTable

_SMALL_RANGE = 256
_REJECTION_TRIES = 32
_SCAN_LIMIT = 4096
_TOPK_LIMIT = 4096


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
    """(probabilities, ids) of the smallest most-probable set holding ``top_p`` of the mass.

    A trained model's nucleus is small: a growing top-k finds it (most likely first). A flat
    distribution's nucleus is most of the vocabulary: its probability threshold is narrowed by
    bisection and only the few ids near it are sorted (ids then are not in probability order).
    """
    vocab = probs.numel()
    k = min(vocab, 512)
    while k <= _TOPK_LIMIT:
        p, ids = torch.topk(probs, k)
        before = torch.cumsum(p, 0) - p
        n = int((before < top_p).sum())
        if n < k or k == vocab:
            n = max(1, n)
            return p[:n], ids[:n]
        k = min(vocab, k * 8)
    # mass strictly above lo >= top_p > mass strictly above hi; narrow the band, then sort only the band
    lo, hi = 0.0, float(probs.max())
    zero = probs.new_zeros(())
    for _ in range(16):
        mid = (lo + hi) / 2
        if float(torch.where(probs > mid, probs, zero).sum()) >= top_p:
            lo = mid
        else:
            hi = mid
    above = probs > hi
    base = float(torch.where(above, probs, zero).sum())
    band = torch.nonzero((probs > lo) & ~above).flatten()
    bp, order = torch.sort(probs[band], descending=True)
    m = int((base + torch.cumsum(bp, 0) - bp < top_p).sum())
    ids = torch.cat([torch.nonzero(above).flatten(), band[order[:m]]])
    return probs[ids], ids


def _sample(weights: torch.Tensor, generator: torch.Generator) -> int:
    """An index drawn in proportion to ``weights`` (one uniform number and a search: cheap on 262k entries)."""
    cdf = torch.cumsum(weights.double(), 0)
    u = float(torch.rand((), generator=generator, dtype=torch.float64)) * float(cdf[-1])
    i = int(torch.searchsorted(cdf, torch.tensor([u], dtype=torch.float64), right=True))
    return i if i < len(weights) else int(torch.nonzero(weights).flatten()[-1])  # u rounded up to the total


def _best_allowed(logits: torch.Tensor, allowed: dict[int, object]) -> int:
    ids = torch.tensor(sorted(allowed))
    return int(ids[torch.argmax(logits[ids])])


def choose_token(
    decoder: GrammarDecoder,
    logits: torch.Tensor,
    temperature: float,
    top_p: float,
    generator: torch.Generator,
) -> tuple[int, object]:
    """One allowed token (and its state) from ``logits`` [vocab] under the semantics in the module doc."""
    logits = logits.detach().float().cpu()
    logits = logits[: min(len(logits), len(decoder.table.texts))]
    left = decoder.budget - 1
    allowed = decoder.allowed()
    if allowed is not None and not allowed:
        raise RuntimeError(f"internal error: the grammar allows no token in state {decoder.state!r}")

    if temperature <= 0:
        if allowed is not None:
            tok = _best_allowed(logits, allowed)
            return tok, allowed[tok]
        return _first_allowed(decoder, logits, left)

    p, ids = _nucleus(torch.softmax(logits / temperature, dim=0), top_p)
    if allowed is not None:
        keep = torch.isin(ids, torch.tensor(list(allowed)))
        if keep.any():
            tok = int(ids[_sample(p * keep, generator)])
        else:
            tok = _best_allowed(logits, allowed)
        return tok, allowed[tok]

    weights = p.clone()
    for _ in range(_REJECTION_TRIES):  # exact: a rejected draw is removed and the rest renormalised
        pick = _sample(weights, generator)
        state = decoder.check(int(ids[pick]), left)
        if state is not None:
            return int(ids[pick]), state
        weights[pick] = 0
        if not bool(weights.any()):
            break
    # Rarely reached (the grammar refused every draw): sample among the allowed tokens found checking the
    # most likely part of the nucleus, else take the most likely allowed token overall.
    top = torch.topk(weights, min(_SCAN_LIMIT, len(weights))).indices
    head = torch.zeros_like(weights)
    states = {}
    for j in top.tolist():
        if weights[j] > 0 and (state := decoder.check(int(ids[j]), left)) is not None:
            head[j] = weights[j]
            states[j] = state
    if states:
        pick = _sample(head, generator)
        return int(ids[pick]), states[pick]
    return _first_allowed(decoder, logits, left)


def _first_allowed(decoder: GrammarDecoder, logits: torch.Tensor, left: int) -> tuple[int, object]:
    """The most probable allowed token, checking candidates in probability order."""
    k = min(len(logits), 256)
    done = 0
    while done < len(logits):
        order = torch.topk(logits, k).indices.tolist()
        for tok in order[done:]:
            state = decoder.check(tok, left)
            if state is not None:
                return tok, state
        done, k = k, min(len(logits), k * 8)
    raise RuntimeError(f"internal error: the grammar allows no token in state {decoder.state!r}")
