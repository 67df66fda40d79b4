"""Stopping on request, for every thread: the command line's handler of SIGINT (Ctrl-C) and SIGTERM (what Slurm,
Kubernetes and `kill` send before they kill a job) sets `STOP` and interrupts the main thread; long work on other
threads, and long libvips reads cut into steps, call `check()` between steps.

Both signals take the same way out: a `KeyboardInterrupt` (for SIGTERM its subclass `Terminated`), so everything
that cleans up after Ctrl-C (temporary files, the raw mask, claims) cleans up after SIGTERM too. The command line
exits with `exit_code(exc)`: 130 after SIGINT, 143 after SIGTERM. Only the command line installs the handler.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

STOP = threading.Event()  # set once the user (SIGINT) or the system (SIGTERM) asked to stop
_received: list[int] = []  # the signals that set STOP, in order (the handler runs on the main thread only)


class Terminated(KeyboardInterrupt):
    """The process was asked to terminate (SIGTERM). A KeyboardInterrupt, so it takes Ctrl-C's way out."""


def _stop_exception() -> KeyboardInterrupt:
    return Terminated() if _received and _received[0] == signal.SIGTERM else KeyboardInterrupt()


def check() -> None:
    """Raise KeyboardInterrupt (Terminated after SIGTERM) when asked to stop (call between steps of long work)."""
    if STOP.is_set():
        raise _stop_exception()


def exit_code(exc: BaseException) -> int:
    """The exit status of a process stopped by `exc`: 128 + the signal's number (143 SIGTERM, 130 SIGINT)."""
    terminated = isinstance(exc, Terminated) or bool(_received and _received[0] == signal.SIGTERM)
    return 128 + (signal.SIGTERM if terminated else signal.SIGINT)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    stopping = STOP.is_set()
    _received.append(signum)
    STOP.set()
    if stopping and signum == signal.SIGTERM:
        return  # already on the way out: a repeated SIGTERM must not cut the clean-up short (SIGKILL does that)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def install_handler() -> None:
    """Route SIGINT and SIGTERM through `STOP` (main thread only; elsewhere a no-op). Only the command line
    calls it: the library never installs signal handlers."""
    if threading.current_thread() is threading.main_thread():
        STOP.clear()
        _received.clear()
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)
