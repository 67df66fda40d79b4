"""The stitcher's probabilities: blended, normalised by the summed weights, uint8 round(p * 255), streamed.

The reference is the naive whole-canvas float64 blend (sum(w * p) / sum(w), 0 where no tile ran), written here
independently of the stitcher's frame/interior split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slidefuse.runtime.grid import TileGrid, blend_window
from slidefuse.runtime.keep import CoarseKeep
from slidefuse.runtime.stitch import Stitcher
from slidefuse.runtime.stitch_probs import quantise_into


def _random_probs(rng: np.random.Generator, c: int, t: int, sharp: float = 1.0) -> np.ndarray:
    e = np.exp(sharp * rng.normal(size=(c, t, t)))
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


def _canvas_probs(grid: TileGrid, tiles: dict[tuple[int, int], np.ndarray], c: int) -> np.ndarray:
    """float64 [H, W, C] normalised blend over a full canvas; 0 where no tile covered."""
    m, t = grid.margin, grid.tile
    span_w = (grid.n_cols - 1) * grid.stride + t
    span_h = (grid.n_rows - 1) * grid.stride + t
    acc = np.zeros((c, span_h, span_w))
    wsum = np.zeros((span_h, span_w))
    win = blend_window(t, grid.overlap).astype(np.float64)
    for (r, col), p in tiles.items():
        y, x = r * grid.stride, col * grid.stride
        acc[:, y : y + t, x : x + t] += p * win
        wsum[y : y + t, x : x + t] += win
    acc, wsum = acc[:, m : m + grid.height, m : m + grid.width], wsum[m : m + grid.height, m : m + grid.width]
    norm = np.divide(acc, wsum, out=np.zeros_like(acc), where=wsum > 0)
    return np.moveaxis(norm, 0, -1)


def _stitch(tmp_path: Path, grid: TileGrid, tiles: dict[tuple[int, int], np.ndarray], c: int, threads: int = 1,
            keep: CoarseKeep | None = None) -> tuple[np.ndarray, np.ndarray]:
    with Stitcher(grid, c, tmp_path / "m.raw", threads=threads, keep=keep, probs_path=tmp_path / "p.raw") as st:
        for rc in sorted(tiles):
            st.add(rc, tiles[rc])
        st.finish()
    mask = np.fromfile(tmp_path / "m.raw", dtype=np.uint8)
    probs = np.fromfile(tmp_path / "p.raw", dtype=np.uint8)
    assert mask.size == grid.width * grid.height and probs.size == mask.size * c
    return mask.reshape(grid.height, grid.width), probs.reshape(grid.height, grid.width, c)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize(
    ("width", "height", "tile", "overlap", "margin", "keep_fraction"),
    [(300, 220, 64, 16, 16, 0.7), (300, 220, 64, 16, 0, 1.0), (64, 64, 64, 8, 0, 1.0), (130, 70, 32, 16, 16, 0.5),
     (200, 90, 40, 0, 0, 0.8), (517, 389, 128, 32, 32, 0.6)],
)
def test_probabilities_equal_the_normalised_canvas_blend(
    tmp_path: Path, width: int, height: int, tile: int, overlap: int, margin: int, keep_fraction: float,
    threads: int,
) -> None:
    rng = np.random.default_rng(width + 3 * tile + overlap)
    c = 4
    grid = TileGrid(width, height, tile, overlap, margin=margin)
    tiles = {rc: _random_probs(rng, c, tile, sharp=3.0) for rc in grid.tiles() if rng.random() < keep_fraction}
    mask, probs = _stitch(tmp_path, grid, tiles, c, threads)
    ref = _canvas_probs(grid, tiles, c)
    expected = np.floor(ref * 255 + 0.5)
    # float32 sums vs float64: a value lands on the other side of a .5 at most, by one step
    assert np.abs(probs.astype(np.int16) - expected).max() <= 1
    assert (probs == expected).mean() > 0.999
    covered = ref.sum(axis=-1) > 0
    assert not probs[~covered].any()  # no tile: 0 in every channel
    assert np.abs(probs[covered].astype(np.int32).sum(axis=-1) - 255).max() <= c  # each pixel sums to ~255
    # the argmax of the uint8 probabilities is the mask, quantisation ties aside
    top = probs.max(axis=-1, keepdims=True)
    tie = (probs == top).sum(axis=-1) > 1
    agree = np.argmax(probs, axis=-1) == mask
    assert agree[covered & ~tie].mean() >= 0.999
    assert agree[~covered].all()


def test_probabilities_are_zero_where_the_keep_mask_drops(tmp_path: Path) -> None:
    grid = TileGrid(96, 80, 32, 8, margin=8)
    p = np.zeros((2, 32, 32), dtype=np.float32)
    p[0], p[1] = 0.25, 0.75
    coarse = np.ones((10, 12), dtype=bool)
    coarse[2:5, 3:9] = False  # drop model rows 16..40, columns 24..72
    mask, probs = _stitch(tmp_path, grid, {rc: p for rc in grid.tiles()}, 2, keep=CoarseKeep(coarse, 8.0))
    dropped = np.zeros((80, 96), dtype=bool)
    dropped[16:40, 24:72] = True
    assert not probs[dropped].any() and not mask[dropped].any()
    assert np.all(probs[~dropped] == [64, 191])  # round(0.25 * 255) = 64, round(0.75 * 255) = 191


def test_probability_buffers_do_not_grow_with_height(tmp_path: Path) -> None:
    c, t, o, w = 3, 128, 32, 5000
    sizes = []
    for h in (200, 2000):
        st = Stitcher(TileGrid(w, h, t, o, margin=o), c, tmp_path / "m.raw", probs_path=tmp_path / "p.raw")
        try:
            assert st.probs is not None
            assert st.probs.band.shape == (t, w, c) and st.probs.band.dtype == np.uint8
            assert st.probs.bottom_w.shape == (o, w + 2 * o)
            sizes.append(st.accumulator_bytes())
        finally:
            st.close()
    assert sizes[0] == sizes[1]


def test_probabilities_leave_the_mask_unchanged(tmp_path: Path) -> None:
    grid = TileGrid(300, 220, 64, 16, margin=16)
    rng = np.random.default_rng(5)
    tiles = {rc: _random_probs(rng, 3, 64) for rc in grid.tiles() if rng.random() < 0.6}
    with Stitcher(grid, 3, tmp_path / "plain.raw") as st:
        for rc in sorted(tiles):
            st.add(rc, tiles[rc])
        st.finish()
    mask, _ = _stitch(tmp_path, grid, tiles, 3, threads=2)
    assert mask.tobytes() == (tmp_path / "plain.raw").read_bytes()


def test_quantise_rounds_and_clips() -> None:
    p = np.array([[[0.0, 1.0, 0.5 / 255, 1.2, -0.1, 0.3]]], dtype=np.float32)
    out = np.zeros((1, 6, 1), dtype=np.uint8)
    quantise_into(out, p)
    assert out[0, :, 0].tolist() == [0, 255, 1, 255, 0, 77]
