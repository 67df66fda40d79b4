"""Blur: a focus measure per cell (a square of ``cell_um``), at a pixel size near the model's.

After HistoQC's ``BlurDetectionModule.identifyBlurryRegions`` (the magnitude of the Laplacian of the grey image,
smoothed and thresholded) and the focus-measure survey it cites (Pertuz, Puig and Garcia 2013, "Analysis of
focus measure operators for shape-from-focus": the variance of the Laplacian is among the best). The tissue is
cut into square cells of ``cell_um``; each cell holding tissue is read at ``focus_mpp`` (at least the model's
um/px), turned grey, and its focus is the variance of the Laplacian over its non-glass pixels. A cell is blurry
when its focus is below ``relative`` times the slide's median focus (a blurred region among sharp ones), or
below ``absolute`` (a slide blurred all over). Cells with less than ``min_tissue`` of tissue or of non-glass
pixels are not assessed.

Memory: one cell at a time. Not caught: blur finer than ``focus_mpp`` can show (at 2 um/px, a blur of less
than about 2 um sigma), and tissue with no texture (fat, mucus) can look blurry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from slidefuse.runtime.qc.base import QCInput, QCMap, check_params


@dataclass(frozen=True)
class BlurParams:
    focus_mpp: float = 2.0  # pixel size the focus is measured at, um/px (the model's when it is coarser)
    cell_um: float = 128.0  # side of the square cells the focus is measured in, um
    relative: float = 0.35  # blurry below this fraction of the slide's median focus
    absolute: float = 2e-4  # blurry below this focus whatever the slide's median (grey in 0..1, variance)
    glass_grey: float = 0.85  # grey level (0..1) above which a pixel is glass and not measured
    min_tissue: float = 0.25  # cells with less than this fraction of non-glass pixels are not assessed

    def __post_init__(self) -> None:
        check_params(self, fractions=("relative", "glass_grey", "min_tissue"), lengths=("absolute",),
                     positive=("focus_mpp", "cell_um"))


def focus(grey: np.ndarray, glass_grey: float) -> tuple[float, float]:
    """(variance of the Laplacian over the non-glass pixels, fraction of non-glass pixels) of float32 grey
    ``[h, w]`` in 0..1."""
    lap = ndimage.laplace(grey, mode="nearest")[1:-1, 1:-1]
    keep = grey[1:-1, 1:-1] < glass_grey
    frac = float(keep.mean()) if keep.size else 0.0
    return (float(lap[keep].var()) if keep.any() else 0.0), frac


def _grey(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(rgb.astype(np.float32) @ np.asarray([0.2125, 0.7154, 0.0721], np.float32) / 255,
                      dtype=np.float32)


def _cells(tissue: np.ndarray, thumb_mpp: float, cell_thumb: int) -> list[tuple[int, int, float]]:
    """(row, col, tissue fraction) of the cells of ``cell_thumb`` thumbnail px that hold any tissue."""
    th, tw = tissue.shape
    out = []
    for r in range(-(-th // cell_thumb)):
        for c in range(-(-tw // cell_thumb)):
            block = tissue[r * cell_thumb:(r + 1) * cell_thumb, c * cell_thumb:(c + 1) * cell_thumb]
            if block.any():
                out.append((r, c, float(block.mean())))
    return out


@dataclass(frozen=True)
class BlurDetector:
    """The "blur" QC method (a `QCMethod`): needs the slide (``QCInput.slide`` or ``QCInput.view``)."""

    settings: BlurParams = BlurParams()
    name: str = "blur"
    version: str = "1"

    def params(self) -> dict[str, Any]:
        return asdict(self.settings)

    def _view(self, qc_input: QCInput) -> tuple[Any, float]:
        mpp = max(self.settings.focus_mpp, qc_input.model_mpp)
        if qc_input.view is not None and abs(qc_input.model_mpp - mpp) < 1e-9:
            return qc_input.view, mpp  # the model's own view (decoded once into memory for a small slide)
        return qc_input.slide.scaled(mpp), mpp

    def run(self, qc_input: QCInput) -> QCMap:
        p = self.settings
        view, mpp = self._view(qc_input)
        cell_thumb = max(1, int(round(p.cell_um / qc_input.thumb_mpp)))
        cell = cell_thumb * qc_input.thumb_mpp / mpp  # a cell's side in focus px
        cells = [rc for rc in _cells(qc_input.tissue, qc_input.thumb_mpp, cell_thumb) if rc[2] >= p.min_tissue]
        scores = np.full(len(cells), np.nan, dtype=np.float64)
        for n, (r, c, _) in enumerate(cells):
            x0, y0 = int(round(c * cell)), int(round(r * cell))
            size = max(3, int(round(cell)))
            value, frac = focus(_grey(view.read(x0, y0, size, size)), p.glass_grey)
            if frac >= p.min_tissue:
                scores[n] = value
        return cell_map(self.name, qc_input, cells, scores, cell_thumb, p)


def cell_map(name: str, qc_input: QCInput, cells: list[tuple[int, int, float]], scores: np.ndarray,
             cell_thumb: int, p: BlurParams) -> QCMap:
    """The blurry cells (focus below the thresholds) drawn on the thumbnail, within tissue; a float32 score map
    (focus / the slide's median, NaN where not assessed)."""
    assessed = np.isfinite(scores)
    median = float(np.median(scores[assessed])) if assessed.any() else 0.0
    threshold = max(p.relative * median, p.absolute)
    mask = np.zeros(qc_input.tissue.shape, dtype=bool)
    score = np.full(qc_input.tissue.shape, np.nan, dtype=np.float32)
    for (r, c, _), value, ok in zip(cells, scores, assessed, strict=True):
        if ok:
            sl = np.s_[r * cell_thumb:(r + 1) * cell_thumb, c * cell_thumb:(c + 1) * cell_thumb]
            mask[sl] = value < threshold
            score[sl] = value / median if median > 0 else np.nan
    return QCMap(name, mask & qc_input.tissue, qc_input.thumb_mpp, score=score,
                 tiles_flagged=int((scores[assessed] < threshold).sum()), tiles_assessed=int(assessed.sum()),
                 details={"median_focus": median, "threshold": threshold, "cell_um": cell_thumb * qc_input.thumb_mpp,
                          "focus_mpp": max(p.focus_mpp, qc_input.model_mpp)})
