"""The slide as the model sees it once QC has excluded regions: excluded pixels painted the slide's glass colour.

Excluding ink means the model does not see it: a tile that holds both tissue and ink is run, but with the ink
replaced by glass, so the tissue around it is labelled as on a clean slide (a transformer's tile sees all of
itself at once: ink in a corner changes the labels of the tissue beside it). The mask is then cut with the
same regions (`slidefuse.runtime.keep.CoarseKeep`).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def glass_colour(thumb_rgb: np.ndarray, tissue: np.ndarray, excluded: np.ndarray) -> tuple[int, int, int]:
    """The median colour of the thumbnail's pixels that are neither tissue nor excluded (light grey if none)."""
    glass = ~tissue & ~excluded
    if not glass.any():
        return (242, 242, 242)
    where = np.flatnonzero(glass.ravel())
    sample = thumb_rgb.reshape(-1, 3)[where[:: len(where) // 65536 + 1]]
    r, g, b = (int(v) for v in np.median(sample, axis=0))
    return (r, g, b)


class MaskedView:
    """A ScaledView (the slide at the model's um/px) whose ``read`` paints the pixels of ``excluded`` (a bool
    raster at ``scale`` model px per raster px, the thumbnail frame) with ``fill``. Everything else is the
    view's own (``width``, ``height``, ``mpp``, ``preload``, ...)."""

    def __init__(self, view: Any, excluded: np.ndarray, scale: float, fill: tuple[int, int, int]) -> None:
        self._view = view
        self._excluded = excluded
        self._scale = float(scale)
        self._fill = np.asarray(fill, dtype=np.uint8)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._view, name)

    def _index(self, start: int, stop: int, size: int) -> np.ndarray:
        centres = (np.arange(start, stop, dtype=np.float64) + 0.5) / self._scale
        return np.clip(centres.astype(np.int64), 0, size - 1)

    def read(self, model_x: int, model_y: int, w: int, h: int) -> np.ndarray:
        """uint8 ``[h, w, 3]`` as ``ScaledView.read``, excluded pixels painted."""
        tile = self._view.read(model_x, model_y, w, h)
        rows = self._index(model_y, model_y + h, self._excluded.shape[0])
        cols = self._index(model_x, model_x + w, self._excluded.shape[1])
        drop = self._excluded[rows][:, cols]
        if drop.any():
            tile = np.array(tile, copy=True)  # a preloaded view hands out slices of its one array
            tile[drop] = self._fill
        return tile
