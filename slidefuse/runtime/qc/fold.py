"""Folds and dark overlaps on the thumbnail.

After HistoQC's dark-tissue module (``LightDarkModule.getIntensityThresholdPercent:darktissue``, grey below a
fixed 0.15) made relative to the slide: two layers of tissue have about twice the optical density of one, so a
fold is tissue whose optical density, averaged over ``smooth_um``, is more than ``ratio`` times the slide's
median tissue density, and darker than ``max_grey``. Regions narrower than ``min_width_um`` are dropped.

Not caught: a fold on a slide that is mostly folded (the median is then the fold's), folds of very pale tissue
(fat), and the line of a fold narrower than ``min_width_um``. Dense, dark tissue (a lymphocyte sheet, a heavily
stained tumour) over a pale slide may be flagged: the map is a flag by default, never an exclusion.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from slidefuse.runtime.qc.base import QCInput, QCMap, check_params
from slidefuse.runtime.qc.colour import block_any, block_average, block_factor, optical_density, smoothed_rgb, upsample
from slidefuse.runtime.tissue import binary_open


@dataclass(frozen=True)
class FoldParams:
    work_mpp: float = 8.0  # finest pixel size detection runs at: finer thumbnails are block-averaged, um/px
    smooth_um: float = 40.0  # box average before the density is compared, um
    ratio: float = 1.7  # a fold is denser than this many times the slide's median tissue density
    max_grey: float = 0.6  # ... and darker than this mean RGB value (0..1)
    min_width_um: float = 80.0  # regions thinner than this are dropped (opening), um

    def __post_init__(self) -> None:
        check_params(self, fractions=("max_grey",), lengths=("smooth_um", "min_width_um"),
                     positive=("work_mpp",))
        if not self.ratio > 1:
            raise ValueError(f"FoldParams.ratio = {self.ratio!r}: expected a number > 1")


def detect_folds(thumb_rgb: np.ndarray, tissue: np.ndarray, thumb_mpp: float,
                 params: FoldParams | None = None) -> tuple[np.ndarray, float]:
    """(bool ``[h, w]`` fold map within ``tissue``, the slide's median tissue density) for a uint8 RGB thumbnail
    ``[h, w, 3]`` at ``thumb_mpp`` um/px."""
    p = params or FoldParams()
    k = block_factor(thumb_mpp, p.work_mpp)
    if k > 1:  # a fold is hundreds of um wide: find it on blocks of about work_mpp
        small, median = detect_folds(block_average(thumb_rgb, k), block_any(tissue, k), thumb_mpp * k, p)
        return upsample(small, k, tissue.shape) & tissue, median
    if not tissue.any():
        return np.zeros(tissue.shape, dtype=bool), 0.0
    rgb = smoothed_rgb(thumb_rgb, thumb_mpp, p.smooth_um)
    od = optical_density(rgb)
    median = float(np.median(od[tissue]))
    folds = tissue & (od > p.ratio * median) & (rgb.mean(axis=-1) < p.max_grey)
    radius = p.min_width_um / 2 / thumb_mpp
    if radius >= 1 and folds.any():
        folds = binary_open(folds, radius)
    return np.asarray(folds & tissue, dtype=bool), median


@dataclass(frozen=True)
class FoldDetector:
    """The "folds" QC method (a `QCMethod`)."""

    settings: FoldParams = FoldParams()
    name: str = "folds"
    version: str = "1"

    def params(self) -> dict[str, Any]:
        return asdict(self.settings)

    def run(self, qc_input: QCInput) -> QCMap:
        folds, median = detect_folds(qc_input.thumb_rgb, qc_input.tissue, qc_input.thumb_mpp, self.settings)
        return QCMap(self.name, folds, qc_input.thumb_mpp, details={"median_tissue_density": median})
