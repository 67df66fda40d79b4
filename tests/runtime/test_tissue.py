"""Tissue detection on thumbnails, and the tile-selection helpers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from slidefuse.runtime import coords
from slidefuse.runtime.slide import InMemorySlide, open_slide
from slidefuse.runtime.tissue import (
    TissueParams,
    binary_close,
    binary_open,
    detect_tissue,
    fill_small_holes,
    otsu_threshold,
    remove_small_objects,
    tiles_touching_tissue,
    tissue_fraction_in_box,
)


def test_cmu_has_plausible_tissue(cmu_slide: Path) -> None:
    with open_slide(cmu_slide) as s:
        thumb_mpp = s.thumbnail_mpp(512)
        mask = detect_tissue(s.thumbnail(512), TissueParams(), thumb_mpp)
    assert mask.dtype == bool and mask.shape == (512, 383)
    assert 0.2 < mask.mean() < 0.95
    assert not mask[400:, :40].any()  # the bottom-left corner is glass
    assert mask[250:300, 150:200].all()  # the middle of the section is tissue


def test_tcga_has_tissue(tcga_slide: Path) -> None:
    with open_slide(tcga_slide, mpp=0.5) as s:
        mask = detect_tissue(s.thumbnail(512), TissueParams(), s.thumbnail_mpp(512))
    assert 0.3 < mask.mean() < 0.95


def test_blank_and_black_have_no_tissue() -> None:
    assert not detect_tissue(np.full((200, 300, 3), 255, np.uint8)).any()
    assert not detect_tissue(np.full((200, 300, 3), 240, np.uint8)).any()
    noisy_glass = np.clip(np.random.default_rng(0).normal(238, 4, (200, 300, 3)), 0, 255).astype(np.uint8)
    assert not detect_tissue(noisy_glass).any()
    black = np.full((200, 300, 3), 245, np.uint8)
    black[50:150, 50:250] = (10, 10, 10)  # a black border / marker, not tissue
    assert not detect_tissue(black).any()


def test_synthetic_blobs_found(synthetic_array: np.ndarray) -> None:
    slide = InMemorySlide(synthetic_array, 0.5)
    thumb_mpp = slide.thumbnail_mpp(512)
    thumb = slide.thumbnail(512)
    mask = detect_tissue(thumb, TissueParams(), thumb_mpp)
    truth = (synthetic_array != 245).any(axis=2)[::4, ::4]  # 2048 -> 512 px: every 4th pixel
    inter = np.logical_and(mask, truth).sum()
    union = np.logical_or(mask, truth).sum()
    assert inter / union > 0.9


def test_params_are_frozen_and_used(synthetic_array: np.ndarray) -> None:
    p = TissueParams()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.min_saturation = 0.5  # type: ignore[misc]
    thumb = InMemorySlide(synthetic_array, 0.5).thumbnail(256)
    everything_small = TissueParams(min_object_fraction=0.9)
    assert not detect_tissue(thumb, everything_small, 4.0).any()
    assert "closing_radius_um" in p.to_dict()


def test_bad_thumbnail() -> None:
    with pytest.raises(ValueError, match="uint8"):
        detect_tissue(np.zeros((10, 10), np.uint8))


def test_otsu_two_modes() -> None:
    values = np.concatenate([np.full(1000, 0.1), np.full(1000, 0.6)])
    assert 0.1 < otsu_threshold(values) <= 0.6


def test_morphology_helpers() -> None:
    m = np.zeros((50, 50), bool)
    m[10:30, 10:30] = True
    m[40, 40] = True  # speck
    opened = binary_open(m, 2)
    assert not opened[40, 40] and opened[12:28, 12:28].all() and not opened[35:, :].any()
    gap = m.copy()
    gap[10:30, 19:21] = False  # a 2 px crack
    assert binary_close(gap, 2)[13:27, 10:30].all()  # bridged (notches at the crack ends may stay)
    assert not remove_small_objects(m, 10)[40, 40] and remove_small_objects(m, 10)[20, 20]
    holed = m.copy()
    holed[18:21, 18:21] = False
    filled = fill_small_holes(holed, 20)
    assert filled[19, 19] and not filled[0, 0]  # hole filled, outside background kept
    assert not fill_small_holes(holed, 5)[19, 19]  # hole of 9 px > 5 stays


def test_tissue_fraction_in_box() -> None:
    m = np.zeros((10, 10), bool)
    m[:5, :] = True
    assert tissue_fraction_in_box(m, (0, 0, 10, 10)) == 0.5
    assert tissue_fraction_in_box(m, (0, 0, 10, 5)) == 1.0
    assert tissue_fraction_in_box(m, (-10, 0, 20, 5)) == 0.5  # outside counts as background
    assert tissue_fraction_in_box(m, (20, 20, 5, 5)) == 0.0
    assert tissue_fraction_in_box(m, (0, 0, 0, 5)) == 0.0


def test_tiles_touching_tissue_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    mask = np.zeros((60, 80), bool)
    mask[10:25, 30:50] = True
    mask[rng.integers(0, 60, 5), rng.integers(0, 80, 5)] = True
    mpp, thumb_mpp, tile = 0.5, 8.0, 512
    boxes = [(x, y, tile, tile) for y in range(-256, 60 * 16, 448) for x in range(-256, 80 * 16, 448)]
    for min_fraction in (0.0, 0.05):
        got = tiles_touching_tissue(mask, boxes, mpp, thumb_mpp, min_fraction)
        for box, flag in zip(boxes, got, strict=True):
            tb = coords.model_box_to_thumb(box, mpp, thumb_mpp)
            assert flag == (tissue_fraction_in_box(mask, tb) > min_fraction), box
    assert tiles_touching_tissue(mask, boxes, mpp, thumb_mpp).any()
    assert not tiles_touching_tissue(np.zeros_like(mask), boxes, mpp, thumb_mpp).any()


@pytest.mark.parametrize("radius", [1.0, 1.5, 2.3, 3.0, 4.1, 5.0, 6.5])
def test_small_radius_morphology_equals_the_distance_transform_definition(radius: float) -> None:
    from scipy import ndimage

    from slidefuse.runtime.tissue import _dilate, _erode

    rng = np.random.default_rng(int(radius * 10))
    mask = ndimage.uniform_filter(rng.random((120, 160)), 9) > 0.52  # blobs, some touching the border
    assert 0.05 < mask.mean() < 0.95
    eroded = ndimage.distance_transform_edt(np.pad(mask, 1, constant_values=True))[1:-1, 1:-1] > radius
    dilated = ndimage.distance_transform_edt(~mask) <= radius
    np.testing.assert_array_equal(_erode(mask, radius), eroded)
    np.testing.assert_array_equal(_dilate(mask, radius), dilated)
