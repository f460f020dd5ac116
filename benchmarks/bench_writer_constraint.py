"""Cost of the writer's grammar constraint per token on a Gemma-sized (262,208-id) vocabulary, model excluded.

    python benchmarks/bench_writer_constraint.py [--steps 300]

No Gemma tokenizer can be downloaded here, so the vocabulary is synthetic but shaped like
Gemma's: every ASCII character, 262k word pieces with and without a leading space, and
pieces that mix text with markup characters (``</``, ``>``, ``_``, ``,``, newlines). Logits
are drawn three ways: flat (an untrained model: the nucleus is most of the vocabulary),
peaked (a trained model: a few likely tokens) and adversarial (forbidden tokens always rank
first). Prints one row per case: ms per token for the constraint and sampling only.
"""

from __future__ import annotations

import argparse
import random
import statistics
import string
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from newbie_core.writer import TokenTable, WriterSettings  # noqa: E402
from newbie_core.writer.constrained import GrammarDecoder, choose_token  # noqa: E402

VOCAB = 262_208


def synthetic_vocab(seed: int = 0) -> list[str | None]:
    rng = random.Random(seed)
    texts: list[str | None] = [None] * VOCAB
    pieces = set(string.printable) | {" " + c for c in string.ascii_letters}
    markup = ["</", "<", ">", ">\n", "\n", "\n\n", "_", ", ", ",", "&amp;", "><", "/>", "\\(", "\\)"]
    letters = string.ascii_lowercase + string.ascii_uppercase + "0123456789" + "éàü日本語"
    while len(pieces) < VOCAB - 300:
        word = "".join(rng.choice(letters) for _ in range(rng.choice([2, 3, 4, 5, 6, 7, 8, 10])))
        r = rng.random()
        if r < 0.45:
            pieces.add(" " + word)
        elif r < 0.85:
            pieces.add(word)
        else:
            m = rng.choice(markup)
            pieces.add(rng.choice([word + m, m + word, m]))
    for i, p in enumerate(sorted(pieces)):
        texts[300 + i] = p
    return texts


def run(table: TokenTable, mode: str, steps: int, seed: int) -> tuple[list[float], int]:
    gen = torch.Generator().manual_seed(seed)
    settings = WriterSettings(seed=seed, max_new_tokens=steps, temperature=1.0, top_p=0.95)
    decoder = GrammarDecoder(table, settings.max_new_tokens)
    sampler = torch.Generator().manual_seed(seed)
    times, n = [], 0
    while not decoder.done:
        logits = torch.randn(VOCAB, generator=gen)
        if mode == "peaked":
            logits *= 8.0
        elif mode == "adversarial":
            markup = torch.zeros(VOCAB, dtype=torch.bool)
            for i in range(0, VOCAB, 97):  # every 97th token gets a big boost: most of those are forbidden
                markup[i] = True
            logits = logits + 25.0 * markup
        t = time.perf_counter()
        tok, state = choose_token(decoder, logits, settings.temperature, settings.top_p, sampler)
        times.append(time.perf_counter() - t)
        decoder.accept(tok, state)
        n += 1
    return times, n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300, help="token budget per case")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t = time.perf_counter()
    table = TokenTable(synthetic_vocab())
    build = time.perf_counter() - t
    print(f"token table for {VOCAB} ids built in {build:.2f} s")
    print(f"{'logits':<12} {'tokens':>7} {'mean ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for mode in ("flat", "peaked", "adversarial"):
        times, n = run(table, mode, args.steps, seed=1)
        ms = sorted(x * 1000 for x in times)
        p95 = ms[int(0.95 * (len(ms) - 1))]
        print(f"{mode:<12} {n:>7} {statistics.mean(ms):>8.2f} {p95:>8.2f} {ms[-1]:>8.2f}")


if __name__ == "__main__":
    main()
