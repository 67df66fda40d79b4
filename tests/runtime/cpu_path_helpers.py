"""Test helpers for the accelerated CPU paths' gates (used by tests/runtime and tests/cli)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from slidefuse.export.quantize import gates as quantize_gates
from slidefuse.runtime.bundle import Bundle


class Skewed:
    """A runner around another one that moves the class of row 0 of every tile to the next class."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __enter__(self) -> Skewed:
        self.inner.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.__exit__(*exc)

    def run(self, tiles: np.ndarray) -> np.ndarray:
        out = np.array(self.inner.run(tiles))
        out[:, :, 0, :] = np.roll(out[:, :, 0, :], 1, axis=1)
        return out

    def info(self) -> Any:
        return self.inner.info()


def skew(monkeypatch: pytest.MonkeyPatch, *precisions: str) -> None:
    """Make the quantize gate's ov-cpu runner at these precisions fail (see `Skewed`)."""
    real = quantize_gates._ov_runner

    def runner(staged: Bundle, precision: str) -> Any:
        return Skewed(real(staged, precision)) if precision in precisions else real(staged, precision)

    monkeypatch.setattr(quantize_gates, "_ov_runner", runner)
