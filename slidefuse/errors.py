"""Typed errors. Each subclasses both SlidefuseError and the closest builtin, so callers can catch either.

Messages are one line: the bad value, what was expected, and how to fix it. The CLI prints them
without a traceback and exits non-zero.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SlidefuseError(Exception):
    """Base class of every error slidefuse raises on purpose."""

    exit_code = 1


class UsageError(SlidefuseError, ValueError):
    """Options that conflict or are out of range. ``field`` names the option (a dataclass field) when one
    option is at fault; the CLI maps it to its flag."""

    exit_code = 2

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SlideNotFound(SlidefuseError, FileNotFoundError):
    """A slide path that does not exist."""


class SlideReadError(SlidefuseError, OSError):
    """A file that exists but is not a slide libvips can open, or is corrupt."""


class MissingPixelSize(SlidefuseError, ValueError):
    """A slide without a pixel size and no --mpp given."""


class InvalidPixelSize(UsageError):
    """A pixel size that is not a positive, finite number of microns per pixel."""


class BundleError(SlidefuseError, ValueError):
    """A model bundle that is missing, incomplete or fails its integrity check."""


class BundleNotFound(BundleError, FileNotFoundError):
    """A bundle folder (or its manifest.json) that does not exist."""


class IntegrityError(BundleError):
    """A bundle file whose sha256 differs from the manifest's."""


class SignatureError(BundleError):
    """A bundle refused for its signature: unsigned, signed by an untrusted key, or changed after signing."""


class UnknownName(SlidefuseError, KeyError):
    """An unknown registry name (encoder, backend, ...), a usage error. The message lists the valid names, after
    the closest ones (`did_you_mean`)."""

    exit_code = 2

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


def did_you_mean(name: object, valid: Iterable[str]) -> str:
    """" (did you mean 'null'?)" naming the valid names closest to `name`, or "" when none is close."""
    close = difflib.get_close_matches(str(name), list(valid), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


class CheckpointError(SlidefuseError, ValueError):
    """A checkpoint that does not match the architecture, or is in an unsupported format."""


class ParityError(SlidefuseError, RuntimeError):
    """An exported graph whose outputs differ from the PyTorch model beyond the thresholds."""


class BackendUnavailable(SlidefuseError, RuntimeError):
    """A backend whose runtime (CUDA, TensorRT, torch, ...) is not installed or has no device."""


class EngineMismatch(SlidefuseError, RuntimeError):
    """A TensorRT engine built for another GPU or TensorRT version."""


class ClaimLost(SlidefuseError, RuntimeError):
    """This process no longer holds a slide's claim (another process took it over): its work on the slide
    stops, without touching what the new holder writes."""

    def __init__(self, message: str, *, holder: str | None = None) -> None:
        super().__init__(message)
        self.holder = holder  # host:pid of the process that holds the claim now, when known


class ClaimBlocked(SlidefuseError, FileExistsError):
    """A slide's claim file cannot be made or taken over (e.g. a non-empty folder in its place)."""


class MissingExtra(SlidefuseError, ImportError):
    """An optional dependency group that is not installed."""

    def __init__(self, module: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs '{module}', which is not installed: "
            f"pip install 'slidefuse[{extra}]'"
        )


def one_line(exc: BaseException, *, max_chars: int | None = None) -> str:
    """An error as one line: the message of slidefuse's errors, `Type: message` for anything else.

    Runs of whitespace (newlines included) become one space; `max_chars` cuts the line to that length.
    """
    text = " ".join(str(exc).split())
    if not isinstance(exc, SlidefuseError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if max_chars is None or len(text) <= max_chars else text[: max(0, max_chars - 3)] + "..."


def require(module: str, extra: str, purpose: str):  # type: ignore[no-untyped-def]
    """Import an optional module or raise MissingExtra naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(module, extra, purpose) from exc
