"""Which pixels of the model frame a mask keeps: the seam between area restrictions and the stitcher.

A region of interest keeps the pixels inside it; quality control (pen ink, for example) drops the pixels it
excludes. Each is a `KeepMask`: for rows ``y0..y1`` of the model frame (the slide at the bundle's um/px,
origin at the slide's top-left), a boolean array ``[y1 - y0, width]``, True where the pixel is kept. The
stitcher sets every pixel that is not kept to class 0 (background) before it counts areas and writes the band,
so areas, the mask and every output made from it agree. Masks combine with `combine` (a pixel is kept when
every mask keeps it).

`CoarseKeep` is the common case: a boolean raster at a coarser pixel size (a thumbnail's, or a rasterised
GeoJSON's), upsampled by nearest neighbour, one band at a time (no whole-slide array at the model's size).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class KeepMask(Protocol):
    """The pixels kept, band by band, in the model frame."""

    def rows(self, y0: int, y1: int, width: int) -> np.ndarray:
        """bool ``[y1 - y0, width]``: True where pixel (x, y) of the model frame is kept."""
        ...


@dataclass(frozen=True)
class CoarseKeep:
    """A boolean raster ``mask`` [h, w] whose pixel (i, j) covers model-frame pixels
    ``[j * scale, (j + 1) * scale) x [i * scale, (i + 1) * scale)``: ``scale`` = mask um/px / model um/px.
    Model pixels beyond the raster's edge take the nearest edge pixel's value."""

    mask: np.ndarray
    scale: float
    _cols: dict[int, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.mask.ndim != 2 or self.mask.dtype != np.bool_ or 0 in self.mask.shape:
            raise ValueError(f"keep mask must be a non-empty 2-D bool array, got {self.mask.dtype} "
                             f"{list(self.mask.shape)}")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"keep mask scale must be a positive number, got {self.scale}")

    def _index(self, start: int, stop: int, size: int) -> np.ndarray:
        centres = (np.arange(start, stop, dtype=np.float64) + 0.5) / self.scale
        return np.clip(centres.astype(np.int64), 0, size - 1)

    def rows(self, y0: int, y1: int, width: int) -> np.ndarray:
        cols = self._cols.get(width)
        if cols is None:  # the same width for every band of a slide
            cols = self._cols.setdefault(width, self._index(0, width, self.mask.shape[1]))
        return self.mask[self._index(y0, y1, self.mask.shape[0])][:, cols]


@dataclass(frozen=True)
class AllOf:
    """Kept where every part keeps the pixel."""

    parts: tuple[KeepMask, ...]

    def rows(self, y0: int, y1: int, width: int) -> np.ndarray:
        kept = self.parts[0].rows(y0, y1, width).copy()
        for part in self.parts[1:]:
            kept &= part.rows(y0, y1, width)
        return kept


def combine(*masks: KeepMask | None) -> KeepMask | None:
    """One mask keeping what all of ``masks`` keep (None entries keep everything); None when all are None."""
    parts = tuple(m for m in masks if m is not None)
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else AllOf(parts)
