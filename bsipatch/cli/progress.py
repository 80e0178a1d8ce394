"""A minimal progress bar for the CLI, drawn on stderr only when it is a terminal.

Library functions take a ``progress`` callback ``(done, total)``; the CLI passes
:meth:`Progress.callback`. No other output here.
"""

from __future__ import annotations

import sys
import time

TYPE_CHECKING = False  # not typing's: importing typing is start-up time
if TYPE_CHECKING:
    from typing import TextIO


class Progress:
    """A one-line progress bar ``label [#####.....] 52% 1.2 GB/s``.

    Args:
        label: text in front of the bar.
        enabled: draw at all; ``None`` means "when stderr is a terminal".
        stream: where to draw (stderr by default).
    """

    def __init__(self, label: str, *, enabled: bool | None = None, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label = label
        self.start = time.monotonic()
        self._last = 0.0

    def callback(self, done: int, total: int) -> None:
        """Progress callback: ``done`` of ``total`` units (bytes) finished."""
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        frac = 0.0 if total <= 0 else min(1.0, done / total)
        width = 30
        filled = int(frac * width)
        rate = done / max(now - self.start, 1e-9)
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {frac * 100:5.1f}% "
            f"{rate / 1e6:8.1f} MB/s"
        )
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line."""
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
