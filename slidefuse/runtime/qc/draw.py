"""QC regions drawn on the slide's images: tissue.png, preview.png and qc.png.

- tissue.png is a palette PNG: index 0 glass, 255 tissue (as before: ``== 255`` is the tissue that counted),
  and one index per QC map (`TISSUE_INDEX`) where a method found something (ink is not tissue; flagged folds and
  blur still count as tissue).
- preview.png: each map's outline in its colour over the image area, and a legend line (red) naming what QC
  found and any stain mismatch.
- qc.png: a uint8 label image at the thumbnail's scale, one bit per map (`run.LABEL_BITS`, bit 0 tissue).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slidefuse.runtime.qc.run import LABEL_BITS, QCResult

QC_FILE = "qc.png"  # the QC maps as a label image, in the slide's output folder when QC ran
COLOURS = {"ink": (20, 90, 255), "folds": (255, 140, 0), "blur": (200, 0, 200)}  # outline / palette colour
TISSUE_INDEX = {"ink": 1, "folds": 2, "blur": 3}  # tissue.png palette index of each map


def tissue_image(tissue: np.ndarray, qc: QCResult | None) -> Any:
    """tissue.png as a PIL image: 8-bit grey (255 = tissue) without QC, a palette image with it."""
    from PIL import Image

    index = np.asarray(tissue, dtype=bool).astype(np.uint8) * 255
    if qc is None or not qc.maps:
        return Image.fromarray(index)
    for name, m in qc.maps.items():
        if name in TISSUE_INDEX and m.mask.shape == index.shape:
            index[m.mask] = TISSUE_INDEX[name]
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[255] = 255
    for name, i in TISSUE_INDEX.items():
        palette[i] = COLOURS[name]
    img = Image.fromarray(index, mode="P")
    img.putpalette(palette.ravel().tolist())
    return img


def _outline(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return np.asarray(mask & ~ndimage.binary_erosion(mask, iterations=2))


def draw_qc(img: Any, qc: QCResult | None) -> str:
    """Outline each QC map on ``img`` (the preview's image area, a PIL RGB image covering the whole slide) and
    return the legend's line about QC ("" when nothing was found)."""
    from PIL import Image

    if qc is None:
        return ""
    rgb = np.asarray(img).copy()
    for name, m in qc.maps.items():
        if not m.mask.any():
            continue
        small = np.asarray(Image.fromarray(m.mask.astype(np.uint8) * 255).resize(img.size, Image.Resampling.NEAREST))
        rgb[_outline(small > 127)] = COLOURS.get(name, (255, 0, 0))
    img.paste(Image.fromarray(rgb))
    found = [f"{name} ({'excluded' if qc.actions.get(name) == 'exclude' else 'flagged'})"
             for name, m in qc.maps.items() if m.mask.any()]
    parts = [f"QC: {', '.join(found)}"] if found else []
    if qc.stain_mismatch and qc.stain is not None:
        parts.append(f"STAIN MISMATCH: tissue looks {qc.stain.stain}, model trained on {qc.model_stain}")
    return " | ".join(parts)


def stain_banner(qc: QCResult | None) -> str:
    """The preview's banner for a stain mismatch ("" when the stain matches or was not checked)."""
    if qc is None or not qc.stain_mismatch or qc.stain is None:
        return ""
    return f"STAIN MISMATCH: the tissue looks {qc.stain.stain}; this model was trained on {qc.model_stain}"


def write_qc_png(qc: QCResult, path: Path) -> dict[str, Any]:
    """qc.png: uint8 ``[thumb_h, thumb_w]`` label image (bit 0 tissue, then `LABEL_BITS`), written atomically."""
    from PIL import Image

    from slidefuse.atomic import atomic_path

    labels = qc.labels()
    with atomic_path(Path(path)) as tmp:
        Image.fromarray(labels).save(tmp, format="PNG")
    return {"file": Path(path).name, "width": int(labels.shape[1]), "height": int(labels.shape[0]),
            "mpp": qc.thumb_mpp, "bits": {"tissue": 0, **LABEL_BITS}}


@dataclass(frozen=True)
class QCMaps:
    """A finished slide's QC as the Python API returns it: bool ``[thumb_h, thumb_w]`` maps by name ("tissue"
    is the tissue found before any exclusion), their pixel size in um/px, and report.json's ``qc`` section."""

    maps: dict[str, np.ndarray]
    mpp: float
    section: dict[str, Any]


def read_qc_png(path: Path, section: dict[str, Any], mpp: float) -> QCMaps:
    """qc.png (written by `write_qc_png`) split into its bool maps."""
    from PIL import Image

    with Image.open(path) as img:
        labels = np.asarray(img, dtype=np.uint8)
    bits = {"tissue": 0, **LABEL_BITS}
    return QCMaps({name: (labels >> bit & 1).astype(bool) for name, bit in bits.items()}, mpp, section)
