"""One progress bar over the phases of a diff whose sizes become known on the way.

search.py and diff.py report into it; it only counts and calls the callback (no I/O).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

ProgressFn = Callable[[int, int], None]


class Meter:
    """One monotone progress bar over phases whose sizes become known on the way.

    ``total`` is the work planned so far (in cost units); :meth:`replan` sets the work
    still to do once it is known, keeping the fraction already shown. Reported as
    ``(done, scale)``: ``scale`` is the new image's size, so rates read as bytes of
    new per second.
    """

    def __init__(self, progress: ProgressFn | None, scale: int, planned: float) -> None:
        self.progress = progress
        self.scale = max(scale, 1)
        self.base = 0.0  # fraction shown when the plan last changed
        self.left = max(planned, 1.0)  # units planned since then
        self.done = 0.0
        self.shown = -1
        self.lock = threading.Lock()

    def replan(self, left: float) -> None:
        """From now on, ``left`` more units of work remain."""
        with self.lock:
            self.base = self.fraction()
            self.left = max(left, 1.0)
            self.done = 0.0

    def fraction(self) -> float:
        return min(1.0, self.base + (1.0 - self.base) * self.done / self.left)

    def add(self, units: float) -> None:
        """``units`` more units of work are done."""
        with self.lock:
            self.done += units
            at = int(self.fraction() * self.scale)
            if at <= self.shown:
                return
            self.shown = at
        if self.progress:
            self.progress(min(at, self.scale), self.scale)

    def finish(self) -> None:
        """Everything is done: report 100%."""
        if self.progress and self.shown < self.scale:
            self.shown = self.scale
            self.progress(self.scale, self.scale)
