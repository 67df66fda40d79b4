"""Keep masks: nearest-neighbour upsampling band by band, combination, and the stitcher zeroing what is dropped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slidefuse.runtime.grid import TileGrid
from slidefuse.runtime.keep import CoarseKeep, combine
from slidefuse.runtime.stitch import Stitcher


def test_coarse_keep_equals_a_whole_upsampled_array() -> None:
    rng = np.random.default_rng(3)
    coarse = rng.random((7, 11)) < 0.5
    keep = CoarseKeep(coarse, scale=4.0)
    full = np.repeat(np.repeat(coarse, 4, axis=0), 4, axis=1)  # 28 x 44
    bands = np.concatenate([keep.rows(y, min(y + 5, 28), 44) for y in range(0, 28, 5)])
    assert np.array_equal(bands, full)
    # beyond the raster's edge: the nearest edge pixel
    assert np.array_equal(keep.rows(30, 31, 50)[0, 44:], np.full(6, coarse[6, 10]))


def test_combine_keeps_what_every_mask_keeps() -> None:
    a = CoarseKeep(np.array([[True, False], [True, True]]), 1.0)
    b = CoarseKeep(np.array([[True, True], [False, True]]), 1.0)
    both = combine(a, None, b)
    assert both is not None
    assert np.array_equal(both.rows(0, 2, 2), np.array([[True, False], [False, True]]))
    assert combine(None, None) is None and combine(a) is a


def test_keep_rejects_bad_rasters() -> None:
    with pytest.raises(ValueError, match="bool"):
        CoarseKeep(np.ones((3, 3), dtype=np.uint8), 1.0)
    with pytest.raises(ValueError, match="scale"):
        CoarseKeep(np.ones((3, 3), dtype=bool), float("nan"))


def test_stitcher_writes_class_0_where_the_keep_mask_drops(tmp_path: Path) -> None:
    grid = TileGrid(96, 80, 32, 8, margin=8)
    probs = np.zeros((2, 32, 32), dtype=np.float32)
    probs[1] = 1.0  # every pixel class 1
    coarse = np.ones((10, 12), dtype=bool)
    coarse[2:5, 3:9] = False  # drop model rows 16..40, columns 24..72
    with Stitcher(grid, 2, tmp_path / "m.raw", keep=CoarseKeep(coarse, 8.0)) as st:
        for rc in grid.tiles():
            st.add(rc, probs)
        st.finish()
    got = np.fromfile(tmp_path / "m.raw", dtype=np.uint8).reshape(80, 96)
    expected = np.ones((80, 96), dtype=np.uint8)
    expected[16:40, 24:72] = 0
    assert np.array_equal(got, expected)
    assert st.class_pixels.tolist() == [24 * 48, 80 * 96 - 24 * 48]
