"""Progress of batch segmentation: hooks the runtime calls, events a caller receives, and the CLI's renderers.

The runtime calls a ``Progress`` object's three hooks (``start_slide``, ``update``, ``end_slide``).
``CallbackProgress`` turns them into ``ProgressEvent`` records passed to a plain callable, which is what the
Python API takes (``model.segment(..., progress=callback)``). Two renderers are such callables:
``BarRenderer`` draws a tqdm bar per slide (terminals and notebooks, through ``tqdm.auto``) and
``LogRenderer`` logs a line every ``interval`` seconds (non-terminal output: CI logs, files).
``make_progress`` is the CLI's choice between them. The library itself never renders anything.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from slidefuse.runtime.types import Status

log = logging.getLogger(__name__)

EventKind = Literal["start", "tiles", "end"]


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a run, as a caller's progress callback receives it."""

    kind: EventKind  # "start": a slide starts; "tiles": tiles stitched; "end": the slide ended (`status`)
    index: int  # the slide's position in the run, 1-based
    count: int  # slides in the run
    name: str  # the slide's file name
    done_tiles: int = 0  # tiles of this slide stitched so far ("tiles" events)
    total_tiles: int = 0  # tiles of this slide to run ("tiles" events; 0 before the tiles are planned)
    status: Status | str | None = None  # "end": a Status (ok, skipped, failed) or a phrase: "tiles done; outputs
    # being written" (the outputs follow on another thread), "claimed by another process"


ProgressCallback = Callable[[ProgressEvent], None]


class Progress:
    """The hooks the runtime calls. This base class does nothing (``NullProgress``)."""

    def start_slide(self, index: int, count: int, name: str) -> None:
        """Slide ``index`` (1-based) of ``count`` starts."""

    def update(self, done_tiles: int, total_tiles: int) -> None:
        """``done_tiles`` of ``total_tiles`` of the current slide are stitched (first call: 0 of total, once
        the tiles are planned)."""

    def end_slide(self, status: Status | str) -> None:
        """The current slide ended with ``status`` (a ``Status``, or a phrase saying what goes on elsewhere)."""


NullProgress = Progress  # nothing at all (--quiet)


class CallbackProgress(Progress):
    """Forwards the runtime's hooks to ``callback`` as ``ProgressEvent`` records (on the thread that runs the
    slide's tiles). An exception raised by the callback stops the slide, like any other failure."""

    def __init__(self, callback: ProgressCallback) -> None:
        self.callback = callback
        self._slide = (0, 0, "")

    def start_slide(self, index: int, count: int, name: str) -> None:
        self._slide = (index, count, name)
        self.callback(ProgressEvent("start", index, count, name))

    def update(self, done_tiles: int, total_tiles: int) -> None:
        self.callback(ProgressEvent("tiles", *self._slide, done_tiles=done_tiles, total_tiles=total_tiles))

    def end_slide(self, status: Status | str) -> None:
        self.callback(ProgressEvent("end", *self._slide, status=status))


def as_progress(progress: ProgressCallback | Progress | None) -> Progress:
    """The runtime's hooks for what a caller passed: a callback, a ``Progress`` object or None (nothing)."""
    if progress is None:
        return NullProgress()
    if isinstance(progress, Progress):
        return progress
    if not callable(progress):
        raise TypeError(f"progress must be a callable taking a ProgressEvent, got {type(progress).__name__}")
    return CallbackProgress(progress)


class BarRenderer:
    """A tqdm bar per slide: ``[i/n] name: 40%|####      | 16/40 [00:02<00:03, 7.9 tile/s]``.

    ``stream`` None uses ``tqdm.auto`` (a widget in Jupyter, text on a terminal) on stderr.
    """

    def __init__(self, stream: TextIO | None = None, mininterval: float = 0.1) -> None:
        self.stream = stream
        self.mininterval = mininterval
        self._bar: Any = None

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind == "start":
            self._close()
            self._bar = self._new_bar(f"[{event.index}/{event.count}] {event.name}")
        elif event.kind == "tiles" and self._bar is not None:
            if self._bar.total != event.total_tiles:
                self._bar.reset(total=event.total_tiles)
            self._bar.update(event.done_tiles - self._bar.n)
        elif event.kind == "end" and self._bar is not None:
            self._bar.set_postfix_str(str(event.status), refresh=False)
            self._close()

    def _new_bar(self, desc: str) -> Any:
        if self.stream is None:
            from tqdm.auto import tqdm
        else:
            from tqdm import tqdm
        return tqdm(desc=desc, total=None, unit="tile", file=self.stream or sys.stderr, leave=True,
                    dynamic_ncols=True, mininterval=self.mininterval)

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class LogRenderer:
    """Plain log lines (INFO) for logs and non-terminal output: one every ``interval`` seconds while tiles
    run, and one when a slide ends."""

    def __init__(self, interval: float = 10.0, logger: logging.Logger | None = None) -> None:
        self.interval = interval
        self.logger = logger or log
        self._t0 = time.monotonic()
        self._last = 0.0

    def __call__(self, event: ProgressEvent) -> None:
        label = f"slide {event.index} of {event.count} ({event.name})"
        now = time.monotonic()
        if event.kind == "start":
            self._t0 = self._last = now
            self.logger.debug("%s: started", label)
        elif event.kind == "tiles":
            if event.done_tiles == 0:  # tiles planned: the rate starts now
                self._t0 = self._last = now
            elif now - self._last >= self.interval and event.done_tiles < event.total_tiles:
                self._last = now
                rate = event.done_tiles / (now - self._t0) if now > self._t0 else 0.0
                self.logger.info("%s: %d/%d tiles, %.1f tiles/s", label, event.done_tiles, event.total_tiles,
                                 rate)
        else:
            self.logger.info("%s: %s", label, event.status)


def make_progress(quiet: bool, stream: TextIO | None = None) -> ProgressCallback | None:
    """What the CLI shows: nothing with ``quiet``, a tqdm bar when ``stream`` (default stderr) is a terminal,
    else periodic log lines."""
    if quiet:
        return None
    stream = stream or sys.stderr
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return BarRenderer(stream)
    return LogRenderer()
