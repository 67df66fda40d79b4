"""preview.png: the raw thumbnail beside the overlay (class colours blended and outlined over the thumbnail,
background untouched), scale bars, a legend, an optional banner; colours that contrast with H&E unless the bundle's
maker chose them; and tissue.png. Includes the real CMU slide's preview (the README picture)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slidefuse.runtime.outputs import OutputOptions, write_outputs
from slidefuse.runtime.outputs.preview import ALPHA, GAP, MAX_SIDE, overlay, preview_size, write_preview

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
    assert im.shape[1] == 2 * pw + GAP and im.shape[0] > ph  # raw | overlay, legend strip under them
    raw, over = im[:ph, :pw].astype(int), im[:ph, pw + GAP:].astype(int)
    sy, sx = ph / h, pw / w
    tumour = over[int(200 * sy), int(250 * sx)]
    stroma = over[int(450 * sy), int(700 * sx)]
    np.testing.assert_array_equal(over[int(50 * sy), int(50 * sx)], [240, 240, 240])
    assert tumour[0] > tumour[2] + 60 and stroma[2] > stroma[0] + 60  # red-ish vs blue-ish (the bundle's colours)
    ring = (over == CLASSES[1].color).all(-1)  # the region's outline, in the class colour at full strength
    assert 2 * (200 * sy + 300 * sx) * 0.9 < ring.sum() < 2 * (200 * sy + 300 * sx) * 1.2
    np.testing.assert_array_equal(raw[int(200 * sy), int(250 * sx)], [240, 240, 240])  # the raw thumbnail
    for panel in (raw, over):  # scale bars: black bar in the bottom-left corner
        assert (panel[-40:, :pw // 3].sum(-1) == 0).sum() > 50
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
    assert im.width == 2 * pw + GAP and ph < im.height <= ph + 200  # raw | overlay + legend strip
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


def test_banner_above_the_panels(tmp_path) -> None:
    mask = np.zeros((60, 90), np.uint8)
    mask[10:30, 10:40] = 1
    result = make_result(mask, tmp_path / "m.raw", mpp=1.0)
    info = write_preview(result, make_slide(360, 240, 0.25), CLASSES, tmp_path / "p.png", banner="stain: unusual")
    im = np.asarray(Image.open(tmp_path / "p.png").convert("RGB")).astype(int)
    assert info["image_y"] > 10 and info["banner"] == "stain: unusual"
    top = im[: info["image_y"]]
    assert (np.abs(top - (255, 243, 176)).sum(-1) == 0).mean() > 0.5  # the pale yellow strip
    assert (np.abs(top - (140, 0, 0)).sum(-1) < 60).sum() > 20  # its dark red text
