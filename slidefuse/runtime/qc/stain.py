"""Which stain a slide carries, by colour deconvolution of its tissue, against the stain the model was trained on.

Ruifrok and Johnston's colour deconvolution (``skimage.color.rgb2hed``'s arithmetic, in numpy) splits each
tissue pixel's optical density into haematoxylin, eosin and DAB. H&E tissue carries eosin over a large part of
its density; a haematoxylin-DAB immunostain (Ki-67, for example) carries next to none, and shows DAB (brown)
instead. The estimate is "H&E" when eosin's share of the summed mean densities is at least ``he_eosin_share``,
"H-DAB" when it is below ``ihc_eosin_share`` and DAB's share is at least ``ihc_dab_share``, else
"unknown" (never a mismatch). Not told apart: special stains (PAS, trichrome) and H&E with very pale eosin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

HE = "H&E"
IHC = "H-DAB"
UNKNOWN = "unknown"
MAX_PIXELS = 1 << 16  # tissue pixels sampled (evenly) for the estimate


@dataclass(frozen=True)
class StainParams:
    he_eosin_share: float = 0.10  # H&E: eosin at least this share of the summed mean densities
    ihc_eosin_share: float = 0.05  # IHC: eosin below this share ...
    ihc_dab_share: float = 0.15  # ... and DAB at least this share


@dataclass(frozen=True)
class StainEstimate:
    stain: str  # HE, IHC or UNKNOWN
    density: dict[str, float]  # mean optical density of haematoxylin, eosin and DAB over the tissue
    shares: dict[str, float]  # each one's share of their sum
    params: StainParams

    def matches(self, model_stain: str) -> bool:
        """False only when the estimate is known and differs from ``model_stain`` ("other": never checked)."""
        return self.stain == UNKNOWN or model_stain == "other" or self.stain == model_stain

    def to_dict(self) -> dict[str, Any]:
        return {"estimate": self.stain, "density": self.density, "shares": self.shares,
                "thresholds": asdict(self.params)}


# Ruifrok and Johnston's haematoxylin, eosin and DAB colour vectors (rows), the matrix scikit-image's rgb2hed
# inverts; rgb_to_hed repeats its arithmetic in numpy (equal to it in tests), so the base install needs no
# scikit-image.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)


def rgb_to_hed(pixels: np.ndarray) -> np.ndarray:
    """Haematoxylin, eosin and DAB densities (float64 ``[..., 3]``, >= 0) of uint8 RGB ``pixels`` ``[..., 3]``:
    optical densities (log of the transmitted fraction, floored at 1e-6 and scaled by log(1e-6)) unmixed by
    ``HED_FROM_RGB``, as ``skimage.color.rgb2hed``."""
    rgb = np.maximum(pixels.astype(np.float64) / 255.0, 1e-6)
    return np.maximum((np.log(rgb) / np.log(1e-6)) @ HED_FROM_RGB, 0.0)


def estimate_stain(thumb_rgb: np.ndarray, tissue: np.ndarray, params: StainParams | None = None) -> StainEstimate:
    """The stain of the tissue (bool ``[h, w]``) of a uint8 RGB thumbnail ``[h, w, 3]``."""
    p = params or StainParams()
    where = np.flatnonzero(tissue.ravel())
    pixels = thumb_rgb.reshape(-1, 3)[where[:: len(where) // MAX_PIXELS + 1]]
    if len(pixels) == 0:
        zero = {"haematoxylin": 0.0, "eosin": 0.0, "dab": 0.0}
        return StainEstimate(UNKNOWN, zero, dict(zero), p)
    hed = rgb_to_hed(pixels.astype(np.uint8)).mean(axis=0)
    density = {"haematoxylin": float(hed[0]), "eosin": float(hed[1]), "dab": float(hed[2])}
    total = max(float(hed.sum()), 1e-12)
    shares = {k: v / total for k, v in density.items()}
    if shares["eosin"] >= p.he_eosin_share:
        stain = HE
    elif shares["eosin"] < p.ihc_eosin_share and shares["dab"] >= p.ihc_dab_share:
        stain = IHC
    else:
        stain = UNKNOWN
    return StainEstimate(stain, density, shares, p)
