"""Per-rank progress with rate and ETA, and the end-of-run summary.

On a terminal one line updates in place (also during a batch's sampling steps); in a log (not a
TTY, or several ranks sharing one stream) a line is printed per finished batch, prefixed with the rank.
"""

from __future__ import annotations

import time


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def per_minute(images: int, seconds: float) -> float:
    return 60.0 * images / seconds if seconds > 0 else 0.0


class RankProgress:
    def __init__(self, total: int, label: str, out, live: bool | None = None):
        self.total = total
        self.label = label
        self.out = out
        self.live = getattr(out, "isatty", lambda: False)() if live is None else live
        self.start = time.perf_counter()
        self.images = 0
        self.failed = 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def line(self, step: str = "") -> str:
        finished = self.images + self.failed
        rate = per_minute(self.images, self.elapsed())
        text = f"{self.label}: {finished}/{self.total} images, {rate:.1f}/min"
        if 0 < finished < self.total:
            eta = self.elapsed() / finished * (self.total - finished)
            text += f", ETA {_duration(eta)}"
        return text + (f" ({step})" if step else "")

    def step(self, i: int, n: int) -> None:
        """Sampling progress inside the current batch (terminal only: logs would drown in it)."""
        if self.live:
            print("\r" + self.line(f"step {i}/{n}"), end="", file=self.out, flush=True)

    def batch_done(self, images: int, failed: int = 0) -> None:
        self.images += images
        self.failed += failed
        if self.live:
            print("\r" + self.line() + " " * 12, end="", file=self.out, flush=True)
        else:
            print(self.line(), file=self.out, flush=True)

    def finish(self) -> None:
        if self.live:
            print(file=self.out, flush=True)
