"""Class colours: the bundle's own when its maker chose them, else a palette far from H&E in Lab space (checked
against the mean tissue colour of the real CMU slide) that the preview really draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import slidefuse
from slidefuse.runtime.bundle import load_bundle
from slidefuse.runtime.palette import PALETTE, REVIEW_PALETTE, colours_chosen, default_colors, display_colors

DEFAULT_BUNDLE = Path(slidefuse.__file__).parent / "data" / "default"
MIN_DELTA_E = 60.0  # least CIE76 distance (Lab) between a display colour and the mean stained tissue


def test_whose_colours() -> None:
    own = [(0, 0, 0), (10, 20, 30), (40, 50, 60)]
    assert display_colors(own, demo=False) == tuple(own)  # chosen by the bundle's maker
    assert display_colors(default_colors(3), demo=False) == ((0, 0, 0), *REVIEW_PALETTE[:2])  # export's default
    assert display_colors(own, demo=True) == ((0, 0, 0), *REVIEW_PALETTE[:2])  # the demonstration bundle
    assert colours_chosen(own, False) and not colours_chosen(default_colors(20), False)
    many = display_colors(default_colors(20), demo=False)
    assert len(many) == 20 and many[1 + len(REVIEW_PALETTE)] == REVIEW_PALETTE[0]
    assert default_colors(3)[1:] == PALETTE[:2]


def _stain_mean_lab(slide) -> np.ndarray:  # type: ignore[no-untyped-def]
    from skimage.color import rgb2lab

    from slidefuse.runtime.slide import open_slide
    from slidefuse.runtime.tissue import TissueParams, detect_tissue

    with open_slide(slide) as s:
        thumb = s.thumbnail(1024)
        tissue = detect_tissue(thumb, TissueParams(), s.thumbnail_mpp(1024))
    assert 0.1 < tissue.mean() < 0.9
    mean = thumb[tissue].astype(np.float64).mean(0)
    return rgb2lab(mean[None, None] / 255.0)[0, 0]


def test_review_palette_contrasts_with_the_stain(cmu_slide) -> None:
    from skimage.color import rgb2lab

    stain = _stain_mean_lab(cmu_slide)
    lab = rgb2lab(np.asarray(REVIEW_PALETTE, np.float64)[None] / 255.0)[0]
    dist = np.linalg.norm(lab - stain, axis=1)
    assert dist.min() >= MIN_DELTA_E, dict(zip(REVIEW_PALETTE, dist.round(1), strict=True))
    # The demonstration bundle's own colours are the stain's: that is why they are not drawn.
    demo = load_bundle(DEFAULT_BUNDLE).manifest
    own = rgb2lab(np.asarray([c.color for c in demo.classes[1:]], np.float64)[None] / 255.0)[0]
    assert np.linalg.norm(own - stain, axis=1).min() < MIN_DELTA_E
    shown = display_colors([c.color for c in demo.classes], demo.demo)
    lab = rgb2lab(np.asarray(shown[1:], np.float64)[None] / 255.0)[0]
    assert np.linalg.norm(lab - stain, axis=1).min() >= MIN_DELTA_E


@pytest.mark.slow
def test_cmu_preview_draws_the_review_palette(tmp_path, cmu_slide) -> None:
    """The default model on the real CMU slide: the overlay's outlines are drawn in the review palette."""
    import json

    from PIL import Image

    with slidefuse.load_model(DEFAULT_BUNDLE) as model:
        res = model.segment(cmu_slide, out=tmp_path)
    rep = json.loads((res.out_dir / "report.json").read_text())
    info = rep["outputs"]["preview"]
    assert info["palette"] == "review" and info["colors"][1:] == [list(c) for c in REVIEW_PALETTE[:2]]
    im = np.asarray(Image.open(res.out_dir / "preview.png").convert("RGB"))
    over = im[info["image_y"]:info["image_y"] + info["image_height"], info["overlay_x"]:]
    for a in rep["areas"].values():
        if a["index"] > 0 and a["fraction"] > 0.01:
            assert (over == info["colors"][a["index"]]).all(-1).sum() > 20, a
