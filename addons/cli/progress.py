"""The one progress bar of the CLI (`pangate scan`, `pangate audit verify`).

    scanning [#############                 ]  42% 1.2/3.0 MB 12 files

Drawn on stderr so stdout stays the answer; redrawn at most `interval` seconds
apart (a bar redrawn per line would cost more than the work it reports), and
always once more at the end so the last frame is the true total.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


class Progress:
    """Counts bytes done out of `total`; `add(n)`, `update(done, total)` or call it as `(done, total)`."""

    def __init__(self, label: str, total: int = 0, enabled: bool = True, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, interval: float = 0.1, width: int = 30):
        self.label, self.total, self.done, self.enabled = label, total, 0, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.clock, self.interval, self.width = clock, interval, width
        self.suffix = ""  # e.g. "12 files": set by the caller, shown on the next draw
        self._last: float | None = None

    def __call__(self, done: int, total: int) -> None:
        """The callback form, as `verify_log(progress=...)` calls it."""
        self.update(done, total)

    def add(self, n: int) -> None:
        self.update(self.done + n)

    def update(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if not self.enabled:
            return
        now = self.clock()
        if self._last is None or now - self._last >= self.interval:
            self._last = now
            self.draw()

    def fraction(self) -> float:
        return 1.0 if self.total <= 0 else min(self.done / self.total, 1.0)

    def line(self) -> str:
        frac = self.fraction()
        bar = "#" * int(frac * self.width)
        text = (f"{self.label} [{bar:<{self.width}}] {frac:4.0%} "
                f"{self.done / 1e6:.1f}/{max(self.total, 0) / 1e6:.1f} MB")
        return f"{text} {self.suffix}" if self.suffix else text

    def draw(self) -> None:
        self.stream.write("\r" + self.line())
        self.stream.flush()

    def clear(self) -> None:
        """Blank the bar's line, so a line printed next does not run into it."""
        if self.enabled and self._last is not None:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def end(self) -> None:
        """The final frame and a newline; nothing if the bar is off."""
        if self.enabled:
            self.draw()
            self.stream.write("\n")
            self.stream.flush()
