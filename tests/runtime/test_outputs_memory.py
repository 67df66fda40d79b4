"""The bounded-memory forms of the output writers give the same results as the plain forms they replace:
GeoJSON regions found without a label image (`Regions`) against scipy's own labels, batched polygonisation
against polygonising the whole mask at once, the in-memory GeoJSON grid (`class_grid`) against libvips'
`mode_downsample`, and the row-chunked preview overlay against the one-shot formula."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from scipy import ndimage

from slidefuse.runtime.outputs import preview
from slidefuse.runtime.outputs import regions as regions_module
from slidefuse.runtime.outputs.geojson import iter_features
from slidefuse.runtime.outputs.polygons import polygonize, to_l0
from slidefuse.runtime.outputs.raster import class_grid, mode_downsample
from slidefuse.runtime.outputs.regions import Regions, region_batches

from .test_outputs_common import CLASSES, blobby_mask, make_result


def _speckled(h: int, w: int, seed: int) -> np.ndarray:
    """uint8 [h, w] in {0, 1, 2}: blobs plus 5% speckle, so thousands of small regions and some large ones."""
    rng = np.random.default_rng(seed)
    m = blobby_mask(h, w, seed=seed)
    speck = rng.random((h, w)) < 0.05
    m[speck] = rng.integers(0, 3, int(speck.sum()), dtype=np.uint8)
    return m


@pytest.mark.parametrize(("label_rows", "scan_pixels"), [(None, 1 << 20), (None, 97), (7, 1), (1, 1 << 20), (13, 300)])
@pytest.mark.parametrize("seed", range(3))
def test_regions_first_pixels_and_boxes_match_scipy(monkeypatch, seed: int, label_rows, scan_pixels: int) -> None:
    """Regions labelled in bands of `label_rows` rows (merged at the seams) and scanned `scan_pixels` at a time
    number the regions as scipy's label of the whole mask does, with the same first pixels and boxes."""
    if label_rows is not None:
        monkeypatch.setattr(regions_module, "LABEL_BAND_PIXELS", 130 * label_rows)
    monkeypatch.setattr(regions_module, "BAND_PIXELS", scan_pixels)
    grid = _speckled(90, 130, seed)
    fg = grid == 1
    labels, n = ndimage.label(fg)
    regions = Regions.of(grid, 1)
    assert len(regions.first) == len(regions.boxes) == n > 100
    # First pixel of each label in raster order, from numpy's own unique.
    values, first = np.unique(labels.ravel(), return_index=True)
    assert np.array_equal(values[1:], np.arange(1, n + 1))
    assert np.array_equal(regions.first, first[1:])
    boxes = [(rs.start, rs.stop, cs.start, cs.stop) for rs, cs in ndimage.find_objects(labels)]
    assert np.array_equal(regions.boxes, np.array(boxes))


def test_regions_of_an_empty_mask_is_empty() -> None:
    regions = Regions.of(np.zeros((7, 9), bool))
    assert len(regions.first) == 0 and list(region_batches(regions.boxes)) == []


@pytest.mark.parametrize("seed", range(3))
def test_each_batch_is_exactly_its_regions_labelled_as_scipy_would(monkeypatch, seed: int) -> None:
    monkeypatch.setattr(regions_module, "LABEL_BAND_PIXELS", 160 * 9)  # regions merged across many seams
    fg = _speckled(120, 160, seed) == 2
    labels, n = ndimage.label(fg)
    regions = Regions.of(fg)
    batches = list(region_batches(regions.boxes, budget_px=400, max_regions=37))
    assert len(batches) > 5 and batches[0][0] == 1 and batches[-1][1] == n
    for lo, hi, (rows, cols) in batches:
        got = regions.batch_labels(fg[rows, cols], lo, hi, (rows.start, cols.start))
        sub = labels[rows, cols]
        inside = (sub >= lo) & (sub <= hi)
        assert got.dtype == np.uint16
        assert np.array_equal(got, np.where(inside, sub - lo + 1, 0))  # = ndimage.label of the batch's mask
        assert np.array_equal(got, ndimage.label(inside)[0])
        assert (rows.stop - rows.start) * (cols.stop - cols.start) <= 400 or lo == hi  # bounded windows


@pytest.mark.parametrize("seed", range(2))
def test_batched_features_equal_polygonising_the_whole_mask(monkeypatch, seed: int) -> None:
    """iter_features' small bands and batches give the same polygons, in the same order, as one polygonize
    call per class over the whole grid (the memory-bounded form changes nothing in mask.geojson)."""
    monkeypatch.setattr(regions_module, "LABEL_BAND_PIXELS", 200 * 11)
    grid = _speckled(150, 200, seed)
    got = list(iter_features(grid, CLASSES, 2.0, 3.0, batch_px=500))
    want = [(c, g) for c in (1, 2) for g in to_l0(polygonize(grid == c), 2.0, 3.0)]
    assert len(got) == len(want) > 500
    assert [c for c, _ in got] == [c for c, _ in want]
    assert all(shapely.equals_exact(a, b, 0.0) for (_, a), (_, b) in zip(got, want, strict=True))


@pytest.mark.parametrize(("shape", "size"), [
    ((60, 80), (80, 60)),  # the mask itself
    ((60, 80), (50, 40)),  # k = 1: nearest only
    ((60, 80), (20, 15)),  # k = 4 blocks fit exactly
    ((61, 83), (20, 15)),  # k = 4 blocks with partial edges, then nearest
])
def test_class_grid_equals_libvips_mode_downsample(tmp_path, shape, size) -> None:
    mask = _speckled(*shape, seed=4)
    result = make_result(mask, tmp_path / "m.raw", mpp=0.5)
    grid, method = class_grid(result, *size, num_classes=3)
    if size == (shape[1], shape[0]):
        want, want_method = mask, "none"
    else:
        img, want_method = mode_downsample(result, *size, num_classes=3, scratch=tmp_path / "blocks.raw")
        want = img.numpy()
        want = want[..., 0] if want.ndim == 3 else want
    assert method == want_method
    assert grid.dtype == np.uint8 and grid.shape == (size[1], size[0])
    assert np.array_equal(grid, want)


def test_chunked_overlay_equals_the_one_shot_blend(monkeypatch) -> None:
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (37, 23, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, (37, 23), dtype=np.uint8)
    colors = [(0, 0, 0), (255, 0, 0), (10, 200, 30), (90, 90, 250)]
    lut = np.zeros((256, 3), np.float32)
    lut[:4] = colors
    a = np.where(labels > 0, np.float32(0.45), np.float32(0))[..., None]
    want = np.clip(np.rint(rgb.astype(np.float32) * (1 - a) + lut[labels] * a), 0, 255).astype(np.uint8)
    monkeypatch.setattr(preview, "OVERLAY_PIXELS", 50)  # 2 rows at a time
    assert np.array_equal(preview.overlay(rgb, labels, colors, 0.45), want)
