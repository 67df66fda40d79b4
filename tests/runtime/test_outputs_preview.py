"""preview.png: screen-sized, class colours blended over the thumbnail, background untouched, a legend;
and tissue.png. Includes the real CMU slide's preview (the README picture)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slidefuse.runtime.outputs import OutputOptions, write_outputs
from slidefuse.runtime.outputs.preview import ALPHA, MAX_SIDE, overlay, preview_size

from .test_outputs_common import CLASSES, cmu_mask, make_bundle, make_result, make_slide

PREVIEW = OutputOptions(formats=frozenset({"preview"}))


def test_overlay_blends_classes_and_leaves_background() -> None:
    rgb = np.full((4, 4, 3), 200, np.uint8)
    labels = np.zeros((4, 4), np.uint8)
    labels[0, 0], labels[1, 1] = 1, 2
    out = overlay(rgb, labels, [c.color for c in CLASSES])
    np.testing.assert_array_equal(out[labels == 0], rgb[labels == 0])
    expect = np.rint(200 * (1 - ALPHA) + np.array(CLASSES[1].color) * ALPHA)
    np.testing.assert_array_equal(out[0, 0], expect)


def test_preview_size_keeps_aspect_and_fits_a_screen() -> None:
    assert preview_size(make_slide(100_000, 50_000, 0.25)) == (MAX_SIDE, MAX_SIDE // 2)
    assert preview_size(make_slide(800, 600, 0.25)) == (800, 600)  # never upscaled


def test_preview_shows_mask_and_legend(tmp_path) -> None:
    h, w = 600, 900
    mask = np.zeros((h, w), np.uint8)
    mask[100:300, 100:400] = 1
    mask[350:550, 500:850] = 2
    thumb = np.full((150, 225, 3), 240, np.uint8)
    result = make_result(mask, tmp_path / "m.raw", mpp=1.0, thumbnail=thumb)
    slide = make_slide(3600, 2400, 0.25)
    paths = write_outputs(result, slide, make_bundle(tmp_path), tmp_path / "o", PREVIEW)
    im = np.asarray(Image.open(paths["preview"]).convert("RGB"))
    pw, ph = preview_size(slide)
    assert im.shape[1] == pw and im.shape[0] > ph  # legend strip under the image
    sy, sx = ph / h, pw / w
    tumour = im[int(200 * sy), int(250 * sx)].astype(int)
    stroma = im[int(450 * sy), int(700 * sx)].astype(int)
    back = im[int(50 * sy), int(50 * sx)].astype(int)
    np.testing.assert_array_equal(back, [240, 240, 240])
    assert tumour[0] > tumour[2] + 60 and stroma[2] > stroma[0] + 60  # red-ish vs blue-ish
    legend = im[ph:]
    red = (np.abs(legend.astype(int) - CLASSES[1].color).sum(-1) < 10).sum()
    blue = (np.abs(legend.astype(int) - CLASSES[2].color).sum(-1) < 10).sum()
    assert red > 100 and blue > 100  # colour swatches
    assert (legend.sum(-1) < 150).sum() > 200  # dark text
    tissue = np.asarray(Image.open(paths["tissue"]))
    assert tissue.shape == (150, 225) and set(np.unique(tissue)) == {0, 255}


def test_preview_of_the_real_cmu_slide(tmp_path, cmu_slide) -> None:
    mask, thumb, slide = cmu_mask(cmu_slide, mpp=2.0)
    result = make_result(mask, tmp_path / "m.raw", mpp=2.0, thumbnail=thumb)
    paths = write_outputs(result, slide, make_bundle(tmp_path), tmp_path / "o", PREVIEW)
    im = Image.open(paths["preview"])
    pw, ph = preview_size(slide)
    assert ph == MAX_SIDE and pw < ph  # the CMU region is portrait
    assert im.width == pw and ph < im.height <= ph + 200  # image + legend strip
    keep = os.environ.get("SLIDEFUSE_KEEP_PREVIEW")  # e.g. to refresh the README picture
    if keep:
        shutil.copy(paths["preview"], Path(keep))


@pytest.mark.parametrize("n_classes", [2, 8])
def test_legend_wraps_many_classes(tmp_path, n_classes: int) -> None:
    from slidefuse.runtime.bundle import ClassInfo

    classes = tuple(ClassInfo(f"class <{i}> & co", (30 * i % 256, 80, 200 - 20 * i))
                    for i in range(n_classes))
    mask = (np.arange(200 * 300).reshape(200, 300) % n_classes).astype(np.uint8)
    result = make_result(mask, tmp_path / "m.raw", mpp=1.0, num_classes=n_classes)
    paths = write_outputs(
        result, make_slide(300, 200, 1.0), make_bundle(tmp_path, classes=classes), tmp_path / "o",
        PREVIEW
    )
    im = Image.open(paths["preview"])
    assert im.width >= 300 and im.height > 200
