"""Ctrl-C for every thread: the command line's SIGINT handler sets `STOP` (and interrupts the main thread as
usual); long work on other threads, and long libvips reads cut into steps, call `check()` between steps."""

from __future__ import annotations

import signal
import threading
from types import FrameType

STOP = threading.Event()  # set once the user asked to stop


def check() -> None:
    """Raise KeyboardInterrupt when the user asked to stop (call between steps of long work)."""
    if STOP.is_set():
        raise KeyboardInterrupt


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    STOP.set()
    raise KeyboardInterrupt


def install_handler() -> None:
    """Route SIGINT through `STOP` (main thread only; elsewhere a no-op). Only the command line calls it."""
    if threading.current_thread() is threading.main_thread():
        STOP.clear()
        signal.signal(signal.SIGINT, _on_sigint)
