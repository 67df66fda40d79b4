"""Progress reporting for batch segmentation: a bar on a terminal, periodic log lines elsewhere, or nothing.

The library calls a ``Progress`` object's three methods; only the CLI chooses which one (``make_progress``).
``TerminalProgress`` redraws one line on stderr: slide i of n, tiles done of total, tiles/s.
``LogProgress`` logs a line every ``interval`` seconds through ``logging``. ``NullProgress`` does nothing.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

log = logging.getLogger(__name__)


class Progress:
    """Base class: no output. Subclasses override the three hooks."""

    def start_slide(self, index: int, count: int, name: str) -> None:
        """Slide ``index`` (1-based) of ``count`` starts."""

    def update(self, done_tiles: int, total_tiles: int) -> None:
        """``done_tiles`` of ``total_tiles`` of the current slide are stitched (first call: 0 of total, once
        the tiles are planned)."""

    def end_slide(self, status: str) -> None:
        """The current slide ended with ``status`` ("ok", "skipped", "failed")."""


NullProgress = Progress  # nothing at all (--quiet)


class _Rate:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def per_second(self, done: int) -> float:
        dt = time.monotonic() - self.t0
        return done / dt if dt > 0 else 0.0


class TerminalProgress(Progress):
    """A one-line bar redrawn on ``stream`` (a terminal): ``[i/n] name |#####     | done/total tiles  r/s``."""

    def __init__(self, stream: TextIO | None = None, width: int = 30, min_interval: float = 0.1) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.min_interval = min_interval
        self._label = ""
        self._rate = _Rate()
        self._last = 0.0
        self._active = False

    def start_slide(self, index: int, count: int, name: str) -> None:
        self._label = f"[{index}/{count}] {name}"
        self._rate = _Rate()
        self._last = 0.0
        self._active = True
        self.stream.write(f"\r{self._label}")
        self.stream.flush()

    def update(self, done_tiles: int, total_tiles: int) -> None:
        if done_tiles == 0:
            self._rate = _Rate()
        self._draw(done_tiles, total_tiles, force=done_tiles in (0, total_tiles))

    def end_slide(self, status: str) -> None:
        if self._active:
            self.stream.write(f"  {status}\n")
            self.stream.flush()
            self._active = False

    def _draw(self, done: int, total: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        frac = done / total if total else 1.0
        filled = int(round(frac * self.width))
        bar = "#" * filled + " " * (self.width - filled)
        rate = self._rate.per_second(done)
        self.stream.write(f"\r{self._label} |{bar}| {done}/{total} tiles {rate:6.1f} tiles/s")
        self.stream.flush()


class LogProgress(Progress):
    """Plain log lines (INFO) every ``interval`` seconds, for logs and non-terminal output."""

    def __init__(self, interval: float = 10.0, logger: logging.Logger | None = None) -> None:
        self.interval = interval
        self.logger = logger or log
        self._label = ""
        self._rate = _Rate()
        self._last = 0.0

    def start_slide(self, index: int, count: int, name: str) -> None:
        self._label = f"slide {index} of {count} ({name})"
        self._rate = _Rate()
        self._last = time.monotonic()
        self.logger.debug("%s: started", self._label)

    def update(self, done_tiles: int, total_tiles: int) -> None:
        now = time.monotonic()
        if done_tiles == 0:  # tiles planned: the rate starts now
            self._rate = _Rate()
            self._last = now
        elif now - self._last >= self.interval and done_tiles < total_tiles:
            self._last = now
            self.logger.info("%s: %d/%d tiles, %.1f tiles/s", self._label, done_tiles, total_tiles,
                             self._rate.per_second(done_tiles))

    def end_slide(self, status: str) -> None:
        self.logger.info("%s: %s", self._label, status)


def make_progress(quiet: bool, stream: TextIO | None = None) -> Progress:
    """What the CLI shows: nothing with ``quiet``, a bar when ``stream`` (default stderr) is a terminal,
    else periodic log lines."""
    if quiet:
        return NullProgress()
    stream = stream or sys.stderr
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return TerminalProgress(stream)
    return LogProgress()
