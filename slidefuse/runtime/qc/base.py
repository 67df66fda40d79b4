"""The quality-control seam: a `QCMethod` turns a slide's thumbnail (and, where it needs finer pixels, the slide)
into a `QCMap`, a boolean map of the problem it looks for at a stated pixel size.

Every method, classical or learned, implements the same protocol, so a learned artifact model (GrandQC-style: an
ONNX network run over the thumbnail or a coarse level, its classes turned into boolean maps) plugs in as one module
registered in `slidefuse.runtime.qc.methods.METHODS`. What happens to a flagged region is not the method's
business: the policy (`slidefuse.runtime.qc.policy`) decides whether it is excluded from the numbers or only flagged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

QCMode = Literal["off", "flag", "default", "exclude"]
QC_MODES: tuple[QCMode, ...] = ("off", "flag", "default", "exclude")
Action = Literal["exclude", "flag"]


@dataclass(frozen=True)
class QCMap:
    """One method's answer for one slide.

    ``mask``: bool ``[h, w]``, True where the problem is, at ``mpp`` um/px, covering the whole slide with the
    same frame as the thumbnail (top-left at the slide's top-left; when ``mpp`` equals the thumbnail's, the same
    pixels). ``score``: an optional float32 map in the same frame (the measure the mask thresholds), for display.
    ``tiles_flagged``: how many of the tiles it assessed it flagged (None for methods that work per pixel),
    ``tiles_assessed`` how many it assessed. ``details``: JSON-able figures for report.json (the slide's own
    measures, e.g. the median focus)."""

    name: str
    mask: np.ndarray
    mpp: float
    score: np.ndarray | None = None
    tiles_flagged: int | None = None
    tiles_assessed: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mask.ndim != 2 or self.mask.dtype != np.bool_:
            raise ValueError(f"QC map {self.name!r}: mask must be a 2-D bool array, got {self.mask.dtype} "
                             f"{list(self.mask.shape)}")
        if not (np.isfinite(self.mpp) and self.mpp > 0):
            raise ValueError(f"QC map {self.name!r}: mpp must be a positive number, got {self.mpp}")


@dataclass(frozen=True)
class QCInput:
    """What a method may look at. ``thumb_rgb``: uint8 ``[h, w, 3]`` RGB thumbnail of the whole slide at
    ``thumb_mpp`` um/px; ``tissue``: bool ``[h, w]`` tissue found on it (before any QC exclusion); ``slide``: the
    open SlideReader (``.scaled(mpp)`` reads finer pixels), or None where only the thumbnail is available;
    ``view``: the slide at the model's um/px (a ScaledView, possibly decoded once into memory) or None;
    ``model_mpp`` / ``tile`` / ``tiles``: the model's pixel size, tile side and the model-frame tile boxes
    ``(x, y, w, h)`` that will run (methods that work per tile assess these)."""

    thumb_rgb: np.ndarray
    tissue: np.ndarray
    thumb_mpp: float
    slide: Any = None
    view: Any = None
    model_mpp: float = 1.0
    tiles: tuple[tuple[int, int, int, int], ...] = ()


def check_params(params: Any, *, fractions: tuple[str, ...] = (), lengths: tuple[str, ...] = (),
                 positive: tuple[str, ...] = ()) -> None:
    """A method's settings in range: ``fractions`` in 0..1, ``lengths`` >= 0, ``positive`` > 0 (ValueError naming
    the setting; these are a method's constants, not user options)."""
    def bad(name: str, expected: str) -> ValueError:
        return ValueError(f"{type(params).__name__}.{name} = {getattr(params, name)!r}: expected {expected}")

    for name in fractions:
        if not 0.0 <= float(getattr(params, name)) <= 1.0:
            raise bad(name, "a number in 0..1")
    for name in lengths:
        if not (np.isfinite(getattr(params, name)) and getattr(params, name) >= 0):
            raise bad(name, "a finite number >= 0")
    for name in positive:
        if not (np.isfinite(getattr(params, name)) and getattr(params, name) > 0):
            raise bad(name, "a finite number > 0")


class QCMethod(Protocol):
    """A quality-control method. ``name`` is the key in report.json and the flag it raises ("ink", "blur",
    "folds"); ``version`` changes whenever its answer for the same input may change (it is part of the skip key);
    ``params()`` are its thresholds, as recorded in report.json."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    def params(self) -> dict[str, Any]:
        """The method's thresholds and settings (JSON-able)."""
        ...

    def run(self, qc_input: QCInput) -> QCMap:
        """The map of what the method finds on this slide."""
        ...
