"""The band stitcher: equals a whole-canvas blend, class 0 where no tile ran, bounded accumulators."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from slidefuse.runtime.grid import TileGrid, blend_window
from slidefuse.runtime.stitch import Stitcher, argmax_classes


def _random_probs(rng: np.random.Generator, c: int, t: int) -> np.ndarray:
    logits = rng.normal(size=(c, t, t)).astype(np.float32)
    e = np.exp(logits)
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


def _canvas_reference(grid: TileGrid, tiles: dict[tuple[int, int], np.ndarray], c: int) -> np.ndarray:
    """The naive way: a full-size float canvas of blended probabilities, then argmax (class 0 if empty)."""
    m, t = grid.margin, grid.tile
    span_w = (grid.n_cols - 1) * grid.stride + t
    span_h = (grid.n_rows - 1) * grid.stride + t
    acc = np.zeros((c, span_h, span_w), dtype=np.float64)
    win = blend_window(t, grid.overlap).astype(np.float64)
    for (r, col), p in tiles.items():
        y, x = r * grid.stride, col * grid.stride
        acc[:, y : y + t, x : x + t] += p * win
    acc = acc[:, m : m + grid.height, m : m + grid.width]
    return np.argmax(acc, axis=0).astype(np.uint8)


def _read_raw(path: Path, grid: TileGrid) -> np.ndarray:
    data = np.fromfile(path, dtype=np.uint8)
    assert data.size == grid.width * grid.height
    return data.reshape(grid.height, grid.width)


@pytest.mark.parametrize(
    ("width", "height", "tile", "overlap", "margin"),
    [(300, 220, 64, 16, 16), (300, 220, 64, 16, 0), (64, 64, 64, 8, 0), (130, 70, 32, 16, 16), (200, 90, 40, 0, 0)],
)
def test_stitcher_equals_whole_canvas_blend(
    tmp_path: Path, width: int, height: int, tile: int, overlap: int, margin: int
) -> None:
    rng = np.random.default_rng(width + tile)
    c = 3
    grid = TileGrid(width, height, tile, overlap, margin=margin)
    keep = [rc for rc in grid.tiles() if rng.random() < 0.7]  # some tiles missing (non-tissue)
    tiles = {rc: _random_probs(rng, c, tile) for rc in keep}
    with Stitcher(grid, c, tmp_path / "m.raw") as st:
        for rc in keep:
            st.add(rc, tiles[rc])
        st.finish()
    got = _read_raw(tmp_path / "m.raw", grid)
    ref = _canvas_reference(grid, tiles, c)
    assert (got == ref).mean() >= 0.9999  # float32 vs float64 sums may flip exact near-ties only
    assert np.array_equal(st.class_pixels, np.bincount(got.ravel(), minlength=c))
    assert st.class_pixels.sum() == width * height
    assert st.tiles_added == len(keep)


def test_pixels_no_tile_covers_are_background(tmp_path: Path) -> None:
    grid = TileGrid(200, 200, 50, 10, margin=10)
    probs = np.zeros((3, 50, 50), dtype=np.float32)
    probs[2] = 1.0  # the one tile says class 2 everywhere
    with Stitcher(grid, 3, tmp_path / "m.raw") as st:
        st.add((1, 1), probs)
        st.finish()
    got = _read_raw(tmp_path / "m.raw", grid)
    x, y, w, h = grid.tile_box((1, 1))
    assert np.all(got[y : y + h, x : x + w] == 2)
    outside = np.ones_like(got, dtype=bool)
    outside[y : y + h, x : x + w] = False
    assert np.all(got[outside] == 0)
    assert st.class_pixels.tolist() == [200 * 200 - 50 * 50, 0, 50 * 50]


def test_empty_slide_is_all_background(tmp_path: Path) -> None:
    grid = TileGrid(123, 45, 32, 8, margin=8)
    with Stitcher(grid, 2, tmp_path / "m.raw") as st:
        st.finish()
    assert not _read_raw(tmp_path / "m.raw", grid).any()
    assert st.class_pixels.tolist() == [123 * 45, 0]


def test_tiles_must_come_in_row_major_order_once(tmp_path: Path) -> None:
    grid = TileGrid(100, 100, 32, 8)
    p = np.full((2, 32, 32), 0.5, dtype=np.float32)
    with Stitcher(grid, 2, tmp_path / "m.raw") as st:
        st.add((1, 1), p)
        with pytest.raises(ValueError, match="row-major"):
            st.add((0, 2), p)
        with pytest.raises(ValueError, match="row-major"):
            st.add((1, 1), p)
        with pytest.raises(ValueError, match="outside"):
            st.add((9, 0), p)
        with pytest.raises(ValueError, match=r"\[2, 32, 32\]"):
            st.add((2, 0), np.zeros((3, 32, 32), dtype=np.float32))


def test_accumulators_hold_overlap_strips_not_full_width_bands(tmp_path: Path) -> None:
    c, t, o, w = 3, 128, 32, 20_000
    grid = TileGrid(w, 300, t, o, margin=o)
    st = Stitcher(grid, c, tmp_path / "m.raw")
    try:
        assert st.bottom.shape == (c, o, w + 2 * o)  # width x o x C floats
        assert st.right.shape == (c, t, o)  # one tile's right strip
        assert st.band.shape == (t, w) and st.band.dtype == np.uint8  # finished rows as uint8
        full_band_floats = c * t * w * 4
        assert st.accumulator_bytes() < 0.5 * full_band_floats
    finally:
        st.close()


def _peak_stitching(tmp_path: Path, width: int, height: int) -> int:
    c, t, o = 3, 64, 16
    grid = TileGrid(width, height, t, o, margin=o)
    probs = _random_probs(np.random.default_rng(0), c, t)
    tracemalloc.start()
    try:
        with Stitcher(grid, c, tmp_path / f"m{height}.raw") as st:
            for rc in grid.tiles():
                st.add(rc, probs)
            st.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


def test_stitch_memory_does_not_grow_with_height_and_stays_below_a_float_band(tmp_path: Path) -> None:
    width = 4000
    short = _peak_stitching(tmp_path, width, 150)
    tall = _peak_stitching(tmp_path, width, 900)
    assert tall < 1.2 * short  # 6x the rows, same memory
    full_band_floats = 3 * 64 * width * 4  # what a T x width float band would need
    assert tall < full_band_floats


def test_argmax_classes_matches_numpy_including_ties() -> None:
    rng = np.random.default_rng(3)
    scores = rng.random((5, 40, 30)).astype(np.float32)
    scores[:, :5] = 0.0  # all-zero pixels -> class 0
    scores[2, 5:8] = scores[4, 5:8] = 2.0  # a tie -> the lower index
    got = argmax_classes(scores)
    assert got.dtype == np.uint8
    assert np.array_equal(got, np.argmax(scores, axis=0))


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize(
    ("width", "height", "tile", "overlap", "margin", "keep_fraction"),
    [(300, 220, 64, 16, 16, 0.7), (300, 220, 64, 16, 0, 1.0), (64, 64, 64, 8, 0, 1.0), (130, 70, 32, 16, 16, 0.5),
     (200, 90, 40, 0, 0, 0.8), (517, 389, 128, 32, 32, 0.6), (90, 400, 48, 12, 12, 0.9)],
)
def test_stitcher_is_bit_identical_to_the_whole_cell_blend(
    tmp_path: Path, width: int, height: int, tile: int, overlap: int, margin: int, keep_fraction: float, threads: int
) -> None:
    """The interior fast path and its threads change no pixel: the mask equals, byte for byte, the one the
    previous stitcher (every cell weighted and summed whole; tests/runtime/legacy_stitch.py) writes."""
    from runtime.legacy_stitch import LegacyStitcher

    rng = np.random.default_rng(width * 7 + tile + overlap)
    c = 4
    grid = TileGrid(width, height, tile, overlap, margin=margin)
    keep = [rc for rc in grid.tiles() if rng.random() < keep_fraction]
    tiles = {rc: _random_probs(rng, c, tile) for rc in keep}
    tiles.update({rc: np.full((c, tile, tile), 0.25, np.float32) for rc in keep[::5]})  # exact ties too
    for cls, name in ((Stitcher, "new.raw"), (LegacyStitcher, "old.raw")):
        kw = {"threads": threads} if cls is Stitcher else {}
        with cls(grid, c, tmp_path / name, **kw) as st:
            for rc in keep:
                st.add(rc, tiles[rc])
            st.finish()
    new, old = (tmp_path / "new.raw").read_bytes(), (tmp_path / "old.raw").read_bytes()
    assert new == old
