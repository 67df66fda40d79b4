"""Pseudo-labels that need no pathologist: background vs tissue, and within tissue haematoxylin-dense vs
eosin-dominant regions, from colour deconvolution.

    RGB uint8 [h, w, 3]
      -> tissue = runtime.tissue.detect_tissue (Otsu on saturation + morphology), the runtime's own detector
      -> optical density OD = -log((I + 1) / 256)                       float [h, w, 3], >= 0
      -> stain concentrations C = OD @ pinv(M)                          float [h, w, 3] (H, E, residual)
         M = Ruifrok & Johnston's H&E stain vectors (rows, unit length), the third row their cross product
      -> H smoothed with a Gaussian of `smooth_um` microns, thresholded inside the tissue:
         Otsu's threshold of the smoothed H over tissue pixels, clamped between the `min_fraction` and
         `1 - min_fraction` quantiles so that each tissue class keeps at least `min_fraction` of the tissue
      -> a majority filter of `majority_um` microns on the tissue classes; then glass inside the tissue outline
         (bright, unsaturated pixels: gaps between fibres) is set back to background (`glass_holes`)
      -> labels uint8 [h, w]: 0 background, 1 haematoxylin-dense, 2 eosin-dominant

These are colour-derived labels for a demonstration model: "haematoxylin-dense" marks nuclei-rich areas
(epithelium, inflammation, dense cellularity), "eosin-dominant" stroma, collagen and cytoplasm-rich areas.
They are not a diagnosis and not a substitute for annotation.

Reference: A. C. Ruifrok, D. A. Johnston, "Quantification of histochemical staining by color deconvolution",
Anal. Quant. Cytol. Histol. 23 (2001) 291-299.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from slidefuse.errors import UsageError

log = logging.getLogger(__name__)

PSEUDO_CLASSES: tuple[str, ...] = ("background", "haematoxylin-dense", "eosin-dominant")
PSEUDO_COLORS: tuple[tuple[int, int, int], ...] = ((0, 0, 0), (75, 40, 160), (240, 110, 170))  # black, violet, pink

# Ruifrok & Johnston (2001) stain OD vectors (RGB), as in their H&E and H-DAB tables.
HAEMATOXYLIN = (0.650, 0.704, 0.286)
EOSIN = (0.072, 0.990, 0.105)


@dataclass(frozen=True)
class PseudoLabelParams:
    smooth_um: float = 6.0  # Gaussian sigma (microns) applied to the haematoxylin concentration before thresholding
    min_fraction: float = 0.2  # each tissue class keeps at least this fraction of the tissue (threshold clamp)
    majority_um: float = 4.0  # half-width (microns) of the majority filter on the tissue classes (0: off)
    glass_holes: bool = True  # glass inside the tissue outline (bright, unsaturated pixels) is background too

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stain_matrix(stain1: tuple[float, float, float] = HAEMATOXYLIN,
                 stain2: tuple[float, float, float] = EOSIN) -> np.ndarray:
    """float64 [3, 3]: rows are unit OD vectors (stain1, stain2, their normalised cross product)."""
    a = np.asarray(stain1, dtype=np.float64)
    b = np.asarray(stain2, dtype=np.float64)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    c = np.cross(a, b)
    return np.stack([a, b, c / np.linalg.norm(c)])


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB [h, w, 3] (0..255) -> float32 optical density [h, w, 3], OD = -log((I + 1) / 256) in 0..5.55."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise UsageError(f"image of dtype {rgb.dtype} and shape {rgb.shape}: expected uint8 RGB [h, w, 3]")
    return (-np.log((rgb.astype(np.float32) + 1.0) / 256.0)).astype(np.float32)


def stain_concentrations(rgb: np.ndarray, matrix: np.ndarray | None = None) -> np.ndarray:
    """Colour deconvolution: uint8 RGB [h, w, 3] -> float32 [h, w, 3] stain concentrations (OD units;
    channel 0 haematoxylin, 1 eosin, 2 residual), C = OD @ pinv(M) with M = `matrix` (default: `stain_matrix()`)."""
    m = stain_matrix() if matrix is None else np.asarray(matrix, dtype=np.float64)
    if m.shape != (3, 3):
        raise UsageError(f"stain matrix of shape {m.shape}: expected [3, 3] (one OD vector per row)")
    od = optical_density(rgb)
    return (od.reshape(-1, 3) @ np.linalg.pinv(m).astype(np.float32)).reshape(od.shape).astype(np.float32)


def clamped_otsu(values: np.ndarray, min_fraction: float) -> float:
    """Otsu's threshold of a 1-D float sample, clamped to its [min_fraction, 1 - min_fraction] quantiles."""
    from slidefuse.runtime.tissue import otsu_threshold

    if values.size == 0:
        return 0.0
    lo, hi = np.quantile(values, [min_fraction, 1.0 - min_fraction])
    vmin, vmax = float(values.min()), float(values.max())
    span = max(vmax - vmin, 1e-12)
    t = vmin + otsu_threshold((values - vmin) / span) * span
    return float(min(max(t, lo), hi))


def pseudo_labels(rgb: np.ndarray, mpp: float, params: PseudoLabelParams | None = None,
                  tissue: np.ndarray | None = None) -> np.ndarray:
    """Pseudo-label map of an H&E image at `mpp` microns per pixel.

    `rgb`: uint8 [h, w, 3] RGB 0..255 (a whole slide or a large region, so that tissue detection sees context).
    `tissue`: optional bool [h, w] tissue mask; default `detect_tissue(rgb, thumb_mpp=mpp)`.
    Returns uint8 [h, w] with 0 background, 1 haematoxylin-dense, 2 eosin-dominant (see `PSEUDO_CLASSES`).
    """
    from slidefuse.runtime.tissue import detect_tissue

    p = params or PseudoLabelParams()
    if not mpp > 0:
        raise UsageError(f"mpp {mpp}: expected a positive pixel size in microns per pixel")
    if not 0.0 <= p.min_fraction < 0.5:
        raise UsageError(f"min_fraction {p.min_fraction}: expected 0 <= value < 0.5")
    if tissue is None:
        tissue = detect_tissue(rgb, thumb_mpp=mpp)
    elif tissue.shape != rgb.shape[:2]:
        raise UsageError(f"tissue mask of shape {tissue.shape}: expected {rgb.shape[:2]} like the image")
    h_conc = stain_concentrations(rgb)[..., 0]
    if p.smooth_um > 0:
        h_conc = ndimage.gaussian_filter(h_conc, sigma=p.smooth_um / mpp, mode="nearest")
    labels = np.zeros(rgb.shape[:2], dtype=np.uint8)
    if not tissue.any():
        return labels
    thr = clamped_otsu(h_conc[tissue], p.min_fraction)
    labels[tissue] = np.where(h_conc[tissue] > thr, 1, 2).astype(np.uint8)
    if p.majority_um > 0:
        labels = majority_filter(labels, max(1, round(p.majority_um / mpp)))
        labels[~tissue] = 0
    if p.glass_holes:
        labels[glass_pixels(rgb)] = 0
    log.debug("pseudo-labels: H threshold %.3f, tissue %.1f%%, H-dense %.1f%% of tissue", thr,
              100 * tissue.mean(), 100 * (labels == 1).sum() / max(1, tissue.sum()))
    return labels


def glass_pixels(rgb: np.ndarray) -> np.ndarray:
    """bool [h, w]: glass, i.e. bright (HSV value >= TissueParams.white_value) and unsaturated (saturation below
    the image's Otsu saturation threshold, clamped like the tissue detector's). Marks the gaps between
    fibres and cells that the tissue detector's closing and hole filling include in the tissue outline."""
    from slidefuse.runtime.tissue import TissueParams, otsu_threshold, saturation_value

    tp = TissueParams()
    sat, val = saturation_value(rgb)
    sample = sat[val >= tp.black_value]
    thr = otsu_threshold(sample) if sample.size else 1.0
    thr = min(max(thr, tp.min_saturation), max(tp.max_saturation_threshold, tp.min_saturation))
    return np.asarray((val >= tp.white_value) & (sat < thr), dtype=bool)


def majority_filter(labels: np.ndarray, radius: int, num_classes: int = len(PSEUDO_CLASSES)) -> np.ndarray:
    """uint8 [h, w] class map -> the most frequent class in each (2 radius + 1)^2 box (ties: lower index)."""
    size = 2 * radius + 1
    votes = np.stack([ndimage.uniform_filter((labels == c).astype(np.float32), size=size, mode="nearest")
                      for c in range(num_classes)])
    return np.asarray(votes.argmax(axis=0), dtype=np.uint8)


def class_fractions(labels: np.ndarray, num_classes: int = len(PSEUDO_CLASSES)) -> np.ndarray:
    """float64 [num_classes]: fraction of the pixels of a uint8 [h, w] class map in each class."""
    counts = np.bincount(labels.ravel(), minlength=num_classes)[:num_classes]
    return counts / max(1, labels.size)
