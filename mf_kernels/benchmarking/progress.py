"""A tiny progress bar on stderr (no dependency): which row runs, how many are done, how long.

On a terminal it redraws one line; in a log (CI, a pipe) it prints one line per row instead,
so the log stays readable.
"""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class Progress:
    def __init__(self, total: int, stream: Optional[TextIO] = None, enabled: bool = True,
                 width: int = 24) -> None:
        self.total, self.done, self.width = total, 0, width
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.start = time.perf_counter()
        self.interactive = enabled and getattr(self.stream, "isatty", lambda: False)()

    def _elapsed(self) -> str:
        seconds = int(time.perf_counter() - self.start)
        return f"{seconds // 60:02d}:{seconds % 60:02d}"

    def _draw(self, label: str) -> None:
        if not self.enabled:
            return
        filled = self.width * self.done // max(self.total, 1)
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"[{bar}] {self.done}/{self.total} {self._elapsed()} {label}"
        if self.interactive:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def show(self, label: str) -> None:
        """Announce the row about to run (redraws the bar without advancing)."""
        self._draw(label)

    def note(self, message: str) -> None:
        """A line that stays (e.g. the parity verdict), printed above the bar."""
        if self.enabled:
            self.stream.write(("\r\033[K" if self.interactive else "") + message + "\n")
            self.stream.flush()

    def advance(self, label: str = "") -> None:
        self.done += 1
        if self.interactive:
            self._draw(label)

    def close(self) -> None:
        if self.enabled:
            if self.interactive:
                self.stream.write("\n")
            self.stream.write(f"done: {self.done} rows in {self._elapsed()}\n")
            self.stream.flush()
