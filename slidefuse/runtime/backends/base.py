"""The backend contract (after Polygraphy's runners): a context manager with one `run` method.

`run(tiles)` takes uint8 RGB tiles `[B, T, T, 3]` (HWC, 0..255, C-contiguous) and returns float32 class
probabilities `[B, C, T, T]` that sum to 1 over C. Input checks happen once, here.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np

from slidefuse.errors import UsageError
from slidefuse.runtime.bundle import Bundle

PRECISIONS = ("fp32", "fp16", "bf16")  # compute precisions a backend may offer (option `precision`)


def check_options(backend: str, options: dict[str, Any], accepted: Iterable[str]) -> None:
    """Raise UsageError naming the first option of `options` that `backend` does not take, and the valid ones."""
    accepted = sorted(accepted)
    for key in options:
        if key not in accepted:
            raise UsageError(f"backend {backend}: unknown option '{key}'; valid options: {', '.join(accepted)}")


def check_precision(backend: str, precision: Any, offered: Iterable[str]) -> str:
    """Return `precision` when `backend` offers it, else raise UsageError listing what it offers."""
    offered = tuple(offered)
    if precision not in offered:
        raise UsageError(f"backend {backend}: precision '{precision}' is not offered; choose one of "
                         f"{', '.join(offered)}")
    return str(precision)


class Backend(abc.ABC):
    name: ClassVar[str]  # registry name, e.g. "ort-cpu"
    description: ClassVar[str] = ""  # one line for `--help` and error messages

    def __init__(self, bundle: Bundle, **options: Any) -> None:
        self.bundle = bundle
        self.options = options
        self._loaded = False

    # --- lifecycle -------------------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def availability(cls) -> str | None:
        """None when this backend can run here; otherwise a one-line reason (missing extra, no GPU)."""

    @abc.abstractmethod
    def _load(self) -> None:
        """Create sessions / engines / buffers. Called once by __enter__."""

    def _close(self) -> None:  # noqa: B027 - optional hook
        """Release resources. Called by __exit__."""

    @abc.abstractmethod
    def _run(self, tiles: np.ndarray) -> np.ndarray:
        """tiles: uint8 [B, T, T, 3], already checked. Returns float32 [B, C, T, T]."""

    def info(self) -> dict[str, Any]:
        """What actually runs: provider list, device name, precision... for reports."""
        return {"backend": self.name}

    def __enter__(self) -> Backend:
        if not self._loaded:
            self._load()
            self._loaded = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loaded:
            self._close()
            self._loaded = False

    # --- the contract ----------------------------------------------------------------------------
    def run(self, tiles: np.ndarray) -> np.ndarray:
        """uint8 [B, T, T, 3] RGB tiles -> float32 [B, C, T, T] class probabilities."""
        if not self._loaded:
            raise RuntimeError(f"backend {self.name} used outside its 'with' block")
        t = self.bundle.manifest.tile_size
        if not isinstance(tiles, np.ndarray) or tiles.dtype != np.uint8:
            raise UsageError(f"{self.name}: tiles must be a uint8 numpy array, got {type(tiles).__name__} "
                             f"{getattr(tiles, 'dtype', '')}")
        if tiles.ndim != 4 or tiles.shape[1:] != (t, t, 3):
            raise UsageError(f"{self.name}: tiles must have shape [B, {t}, {t}, 3], got {list(tiles.shape)}")
        out = self._run(np.ascontiguousarray(tiles))
        expected = (tiles.shape[0], self.bundle.manifest.num_classes, t, t)
        if out.shape != expected:
            raise RuntimeError(f"{self.name}: engine returned shape {list(out.shape)}, expected {list(expected)}")
        return out
