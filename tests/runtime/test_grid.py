"""Tile grid geometry, blend window and tissue-based tile selection."""

from __future__ import annotations

import numpy as np
import pytest

from slidefuse.errors import UsageError
from slidefuse.runtime.grid import TileGrid, blend_ramp, blend_window, select_tiles


@pytest.mark.parametrize(
    ("width", "height", "tile", "overlap", "margin"),
    [(1000, 700, 128, 32, 0), (1000, 700, 128, 32, 32), (128, 128, 128, 16, 0), (50, 30, 64, 16, 16),
     (513, 1, 64, 0, 0), (4097, 257, 256, 128, 128), (300, 300, 100, 50, 0)],
)
def test_grid_covers_every_pixel_including_right_and_bottom_edges(
    width: int, height: int, tile: int, overlap: int, margin: int
) -> None:
    g = TileGrid(width, height, tile, overlap, margin=margin)
    cover = np.zeros((height, width), dtype=np.int32)
    for x, y, w, h in g.tile_boxes():
        assert (w, h) == (tile, tile)
        cover[max(y, 0) : max(y + h, 0), max(x, 0) : max(x + w, 0)] += 1
    assert cover.min() >= 1
    assert cover.max() <= 4  # overlap <= T/2: at most two tiles per axis
    # the last column / row reaches at least `margin` px past the edge, and one fewer would not
    last_x, last_y, _, _ = g.tile_box((g.n_rows - 1, g.n_cols - 1))
    assert last_x + tile >= width + margin and last_y + tile >= height + margin
    if g.n_cols > 1:
        assert last_x - g.stride + tile < width + margin
    if g.n_rows > 1:
        assert last_y - g.stride + tile < height + margin
    # the first tile starts `margin` px before the origin
    assert g.tile_box((0, 0))[:2] == (-margin, -margin)


def test_grid_tiles_are_row_major_and_cells_partition_the_padded_frame() -> None:
    g = TileGrid(1000, 700, 128, 32, margin=32)
    tiles = list(g.tiles())
    assert tiles == sorted(tiles)
    assert len(tiles) == g.n_tiles == g.n_rows * g.n_cols
    xs = [g.col_span(c) for c in range(g.n_cols)]
    assert xs[0][0] == 0 and xs[-1][1] == g.padded_width == 1064
    assert all(a[1] == b[0] for a, b in zip(xs, xs[1:], strict=False))
    assert all(g.overlap <= x1 - x0 <= g.tile for x0, x1 in xs[1:])


@pytest.mark.parametrize(("tile", "overlap", "margin"), [(64, 33, 0), (64, -1, 0), (64, 8, -1), (0, 0, 0)])
def test_grid_rejects_bad_geometry(tile: int, overlap: int, margin: int) -> None:
    with pytest.raises(UsageError):
        TileGrid(100, 100, tile, overlap, margin=margin)


def test_blend_ramp_is_smooth_positive_and_partitions_unity_over_the_overlap() -> None:
    t, o = 128, 32
    ramp = blend_ramp(t, o)
    assert ramp.dtype == np.float32 and ramp.shape == (t,)
    assert ramp.min() > 0 and ramp.max() == 1.0
    assert np.all(ramp[o : t - o] == 1.0)
    assert np.allclose(ramp, ramp[::-1])
    assert np.all(np.diff(ramp[:o]) > 0)  # rises monotonically
    # two neighbouring tiles (stride t - o) sum to exactly 1 across their shared o px
    assert np.allclose(ramp[t - o :] + ramp[:o], 1.0, atol=1e-6)
    assert np.all(blend_ramp(64, 0) == 1.0)


def test_blend_window_is_the_outer_product() -> None:
    win = blend_window(96, 24)
    ramp = blend_ramp(96, 24)
    assert win.shape == (96, 96) and win.dtype == np.float32
    assert np.allclose(win, ramp[:, None] * ramp[None, :])
    assert win.min() > 0


def test_select_tiles_keeps_exactly_the_tiles_touching_tissue() -> None:
    mpp, thumb_mpp = 1.0, 4.0  # thumbnail 4x coarser than the model frame
    g = TileGrid(800, 600, 100, 20, margin=20)
    tissue = np.zeros((150, 200), dtype=bool)  # thumb frame covers 800 x 600 model px
    tissue[40:60, 100:130] = True  # model box x 400..520, y 160..240
    chosen = select_tiles(g, tissue, mpp, thumb_mpp)
    expected = []
    for rc in g.tiles():
        x, y, w, h = g.tile_box(rc)
        if x < 520 and x + w > 400 and y < 240 and y + h > 160:
            expected.append(rc)
    assert chosen == expected
    assert chosen == sorted(chosen)
    assert select_tiles(g, None, mpp, thumb_mpp) == list(g.tiles())
    assert select_tiles(g, np.zeros_like(tissue), mpp, thumb_mpp) == []
