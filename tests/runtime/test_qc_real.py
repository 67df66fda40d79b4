"""Quality control on the real slides: no clean tissue taken for ink, the Ki-67 immunostain flagged against an
H&E model and no H&E slide flagged, and ink drawn on a real slide found (recall, precision against the drawn
pixels), with the generator of benchmarks/qc_slides.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slidefuse.runtime.qc.ink import detect_ink
from slidefuse.runtime.qc.stain import estimate_stain
from slidefuse.runtime.slide import open_slide
from slidefuse.runtime.tissue import detect_tissue

pytestmark = pytest.mark.slow


def _thumb(path: Path, mpp: float | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    slide = open_slide(path, default_mpp=mpp)
    try:
        thumb_mpp = float(slide.thumbnail_mpp(2048))
        thumb = slide.thumbnail(2048)
        return thumb, detect_tissue(thumb, thumb_mpp=thumb_mpp), thumb_mpp
    finally:
        slide.close()


def test_clean_tissue_of_the_real_slides_is_not_ink_and_only_ki67_is_flagged_for_stain(
        cmu_slide: Path, tcga_slide: Path, ome_slide: Path) -> None:
    for path, mpp, stain in ((cmu_slide, None, "H&E"), (tcga_slide, 0.25, "H&E"), (ome_slide, None, "H-DAB")):
        thumb, tissue, thumb_mpp = _thumb(path, mpp)
        assert (detect_ink(thumb, thumb_mpp) & tissue).sum() / tissue.sum() <= 0.01, path.name
        estimate = estimate_stain(thumb, tissue)
        assert estimate.stain == stain and estimate.matches("H&E") == (stain == "H&E"), path.name


def test_marker_strokes_drawn_on_cmu_are_found(cmu_slide: Path) -> None:
    from benchmarks.qc_slides import draw_ink, read_level0

    rgb, mpp = read_level0(cmu_slide.name, None)
    inked, truth = draw_ink(rgb, mpp, seed=7)
    k = 4  # a 2 um/px thumbnail, block-averaged as a slide's pyramid would give it
    h, w = inked.shape[0] // k * k, inked.shape[1] // k * k
    thumb = inked[:h, :w].reshape(h // k, k, w // k, k, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    drawn = truth[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3)) > 0.5
    found = detect_ink(thumb, mpp * k)
    assert (found & drawn).sum() / drawn.sum() >= 0.95
    assert (found & drawn).sum() / found.sum() >= 0.9
