"""Pen ink (blue, green, red and black marker) on the thumbnail.

After the published classical detectors: histolab's pen filters (``filters/image_filters_functional.py``:
``blue_pen_filter``, ``green_pen_filter``, ``red_pen_filter``, each a union of RGB colour boxes) and HistoQC's
pen-marking module (``ClassificationModule.byExampleWithFeatures`` with the ``pen_markings`` templates: a pixel
classifier on colour features). Both decide per pixel by colour; here the colour boxes are stated in HSV (hue
bands and a saturation floor per ink, a value ceiling for black), on a thumbnail box-averaged over ``smooth_um``
first, so a single haematoxylin-dark nucleus (about 8 um) is averaged with its surroundings while a marker
stroke (hundreds of um wide) keeps its colour. An opening removes what is left thinner than ``min_width_um``,
and the mask grows by ``grow_um`` to take the stroke's soft, half-transparent edge.

Not caught: ink whose colour is that of the stain (purple or pink marker on H&E), very faint strokes (below
the saturation floors), and black ink that is no darker than dense tissue.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from slidefuse.runtime.qc.base import QCInput, QCMap, check_params
from slidefuse.runtime.qc.colour import block_average, block_factor, disk, hsv, smoothed_rgb, upsample
from slidefuse.runtime.tissue import binary_open


@dataclass(frozen=True)
class InkParams:
    work_mpp: float = 4.0  # finest pixel size detection runs at: finer thumbnails are block-averaged, um/px
    smooth_um: float = 12.0  # box average before the colour rules, um
    blue_hue: tuple[float, float] = (190.0, 260.0)  # hue band of blue ink, degrees
    blue_saturation: float = 0.3  # saturation floor of blue ink (0..1)
    green_hue: tuple[float, float] = (70.0, 190.0)  # hue band of green ink, degrees
    green_saturation: float = 0.2  # saturation floor of green ink
    red_hue: tuple[float, float] = (340.0, 20.0)  # hue band of red ink, degrees (wraps through 0)
    red_saturation: float = 0.35  # saturation floor of red ink
    black_value: float = 0.28  # HSV value below which a pixel is black ink, whatever its saturation (0..1)
    grey_value: float = 0.5  # HSV value below which an unsaturated pixel is black ink (0..1)
    grey_saturation: float = 0.2  # saturation below which a pixel counts as unsaturated (grey)
    loose_blue_hue: tuple[float, float] = (190.0, 290.0)  # the loose rules, only where they touch sure ink:
    loose_red_hue: tuple[float, float] = (335.0, 20.0)  # ink over tissue mixes with the stain's colour
    loose_saturation: float = 0.3  # saturation floor of the loose blue and red rules
    loose_grey: tuple[float, float] = (0.6, 0.25)  # (value, saturation) ceilings of loose black ink
    faint: tuple[float, float] = (0.7, 0.1)  # (value floor, saturation floor) of a stroke's faint edge on glass
    faint_excluded_hue: tuple[float, float] = (280.0, 350.0)  # ... unless pink or purple (pale tissue)
    reach_um: float = 40.0  # how far from sure ink the loose rules may add pixels, um
    min_width_um: float = 24.0  # regions thinner than this are removed (opening), um
    grow_um: float = 4.0  # the mask grows by this much to take the stroke's soft edge, um

    def __post_init__(self) -> None:
        check_params(self, fractions=("blue_saturation", "green_saturation", "red_saturation", "black_value",
                                      "grey_value", "grey_saturation", "loose_saturation"),
                     lengths=("smooth_um", "min_width_um", "grow_um", "reach_um"), positive=("work_mpp",))


def _in_band(hue: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    lo, hi = band
    return (hue >= lo) & (hue < hi) if lo <= hi else (hue >= lo) | (hue < hi)


def ink_colours(rgb: np.ndarray, p: InkParams) -> tuple[np.ndarray, np.ndarray]:
    """(sure, loose): bool ``[h, w]`` maps of the pixels of float RGB ``[h, w, 3]`` (0..1, already smoothed)
    whose colour is surely ink, and of those whose colour may be ink mixed with the stain's."""
    hue, sat, val = hsv(rgb)
    loose = _in_band(hue, p.loose_blue_hue) & (sat >= p.loose_saturation)
    loose |= _in_band(hue, p.loose_red_hue) & (sat >= p.loose_saturation)
    loose |= (val < p.loose_grey[0]) & (sat < p.loose_grey[1])
    loose |= (val >= p.faint[0]) & (sat >= p.faint[1]) & ~_in_band(hue, p.faint_excluded_hue)
    ink = _in_band(hue, p.blue_hue) & (sat >= p.blue_saturation)
    ink |= _in_band(hue, p.green_hue) & (sat >= p.green_saturation)
    ink |= _in_band(hue, p.red_hue) & (sat >= p.red_saturation)
    ink |= (val < p.black_value) | ((val < p.grey_value) & (sat < p.grey_saturation))
    return np.asarray(ink, dtype=bool), np.asarray(loose | ink, dtype=bool)


@dataclass(frozen=True)
class InkDetector:
    """The "ink" QC method (a `QCMethod`)."""

    settings: InkParams = InkParams()
    name: str = "ink"
    version: str = "1"

    def params(self) -> dict[str, Any]:
        return asdict(self.settings)

    def run(self, qc_input: QCInput) -> QCMap:
        return QCMap(self.name, detect_ink(qc_input.thumb_rgb, qc_input.thumb_mpp, self.settings), qc_input.thumb_mpp)


def detect_ink(thumb_rgb: np.ndarray, thumb_mpp: float, params: InkParams | None = None) -> np.ndarray:
    """bool ``[h, w]``, True on pen ink, for a uint8 ``[h, w, 3]`` RGB thumbnail at ``thumb_mpp`` um/px. A
    thumbnail finer than ``work_mpp`` is block-averaged to about that first (the answer is repeated back)."""
    p = params or InkParams()
    k = block_factor(thumb_mpp, p.work_mpp)
    if k > 1:
        small = detect_ink(block_average(thumb_rgb, k), thumb_mpp * k, p)
        return upsample(small, k, thumb_rgb.shape)
    sure, loose = ink_colours(smoothed_rgb(thumb_rgb, thumb_mpp, p.smooth_um), p)
    radius = p.min_width_um / 2 / thumb_mpp
    if radius >= 1:  # specks of ink colour (a dark nucleus cluster, dirt) go first
        sure = binary_open(sure, radius)
    # the loose rules add pixels only within reach_um of sure ink (a geodesic dilation inside `loose`): the soft
    # edge of a stroke and ink over tissue, never a whole purple region that merely touches a stroke
    ink = sure
    steps = int(p.reach_um / thumb_mpp)
    if steps >= 1 and sure.any():
        ink = ndimage.binary_dilation(sure, iterations=steps, mask=loose)
    grow = p.grow_um / thumb_mpp
    if grow >= 1 and ink.any():
        ink = ndimage.binary_dilation(ink, structure=disk(grow))
    return np.asarray(ink, dtype=bool)
