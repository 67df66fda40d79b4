"""The overlapping tile grid in the model frame, its blend weight window, and tile selection by tissue.

Frames (see ``coords``): tiles live in the *model* frame (pixels at the bundle's microns per pixel); a tile is
addressed by ``tile_rc = (row, col)`` and covers the model-frame box
``(col * stride - margin, row * stride - margin, T, T)``.
The grid is regular. It starts ``margin`` px before the left / top edges and its last row and column reach at
least ``margin`` px past the right / bottom edges; the reader pads white outside the slide. With
``margin = overlap`` (what ``segment`` uses) every slide pixel sees at least ``overlap`` px of context on every
side, real or white glass, so pixels at the slide's edges are predicted like interior ones, never next to a
tile border.

Cells (what the stitcher finalises) live in the *padded* frame ``[0, width + 2 margin) x [0, height + 2 margin)``
(padded x = model x + margin): cell ``(r, c)`` is ``[c * stride, c * stride + cell_w) x [r * stride, r * stride +
cell_h)`` with ``cell_w = stride`` except in the last column, where it runs to the padded frame's right edge (at
most ``T`` px); likewise for rows. With
``overlap <= T / 2``, a pixel of cell ``(r, c)`` is covered by tile ``(r, c)`` and, within ``overlap`` px of the
cell's left / top edge, by tiles ``(r, c - 1)``, ``(r - 1, c)`` and ``(r - 1, c - 1)``: at most four tiles.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from slidefuse.errors import UsageError
from slidefuse.runtime import coords

log = logging.getLogger(__name__)

TileRC = tuple[int, int]  # (row, col) of a tile in the grid


@dataclass(frozen=True)
class TileGrid:
    """A regular grid of ``tile`` x ``tile`` px tiles with ``overlap`` px overlap over a model-frame image."""

    width: int  # model-frame width in px (the slide at the bundle's mpp)
    height: int  # model-frame height in px
    tile: int  # tile side T in px
    overlap: int  # overlap o in px between neighbouring tiles, 0 <= o <= T // 2
    margin: int = 0  # px of white context added beyond every edge (segment uses margin = overlap)

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise UsageError(f"tile grid: image size must be positive, got {self.width} x {self.height} px")
        if self.tile < 1:
            raise UsageError(f"tile grid: tile size must be >= 1 px, got {self.tile}")
        if not 0 <= self.overlap <= self.tile // 2:
            raise UsageError(
                f"overlap {self.overlap} px is out of range for {self.tile} px tiles; "
                f"choose 0..{self.tile // 2} px (at most half a tile)"
            )
        if self.margin < 0:
            raise UsageError(f"tile grid: margin must be >= 0 px, got {self.margin}")

    @property
    def stride(self) -> int:
        """Tile step s = T - o in px."""
        return self.tile - self.overlap

    @property
    def padded_width(self) -> int:
        """Width of the padded frame: width + 2 * margin."""
        return self.width + 2 * self.margin

    @property
    def padded_height(self) -> int:
        """Height of the padded frame: height + 2 * margin."""
        return self.height + 2 * self.margin

    @property
    def n_cols(self) -> int:
        """Number of tile columns: the smallest n with (n - 1) * s + T >= padded width."""
        return _count(self.padded_width, self.tile, self.stride)

    @property
    def n_rows(self) -> int:
        """Number of tile rows: the smallest n with (n - 1) * s + T >= padded height."""
        return _count(self.padded_height, self.tile, self.stride)

    @property
    def n_tiles(self) -> int:
        return self.n_rows * self.n_cols

    def tile_box(self, tile_rc: TileRC) -> coords.Box:
        """Model-frame box ``(x, y, T, T)`` of tile ``(row, col)``; may reach past any edge (by the margin at
        the left / top, further at the right / bottom)."""
        r, c = tile_rc
        return c * self.stride - self.margin, r * self.stride - self.margin, self.tile, self.tile

    def tile_boxes(self) -> list[coords.Box]:
        """Model-frame boxes of all tiles in row-major order (index = row * n_cols + col)."""
        return [self.tile_box(rc) for rc in self.tiles()]

    def tiles(self) -> Iterator[TileRC]:
        """All ``tile_rc`` in row-major order."""
        for r in range(self.n_rows):
            for c in range(self.n_cols):
                yield r, c

    def col_span(self, col: int) -> tuple[int, int]:
        """Padded-frame x range ``[x0, x1)`` of the cells of column ``col`` (the last one runs to the edge)."""
        x0 = col * self.stride
        return x0, (self.padded_width if col == self.n_cols - 1 else x0 + self.stride)

    def row_span(self, row: int) -> tuple[int, int]:
        """Padded-frame y range ``[y0, y1)`` of the cells of row ``row`` (the last one runs to the edge)."""
        y0 = row * self.stride
        return y0, (self.padded_height if row == self.n_rows - 1 else y0 + self.stride)


def _count(size: int, tile: int, stride: int) -> int:
    if size <= tile:
        return 1
    return math.ceil((size - tile) / stride) + 1


def blend_ramp(tile: int, overlap: int) -> np.ndarray:
    """1-D blend weights along one tile side: float32 ``[tile]`` in (0, 1].

    A raised-cosine ramp over the first and last ``overlap`` px (``sin^2`` rising from near 0 to 1), 1 in the
    middle. Never zero, so a pixel that only one tile covers (slide edges, missing neighbours) still gets a
    prediction; neighbouring ramps over one overlap sum to exactly 1.
    """
    w = np.ones(tile, dtype=np.float64)
    if overlap > 0:
        i = np.arange(overlap, dtype=np.float64)
        up = np.sin(np.pi / 2 * (i + 0.5) / overlap) ** 2
        w[:overlap] = up
        w[tile - overlap :] = np.minimum(w[tile - overlap :], up[::-1])
    return w.astype(np.float32)


def blend_window(tile: int, overlap: int) -> np.ndarray:
    """2-D blend weight window: float32 ``[tile, tile]`` (tile frame, rows = y), the outer product of
    ``blend_ramp`` with itself; values in (0, 1]."""
    ramp = blend_ramp(tile, overlap)
    return np.outer(ramp, ramp).astype(np.float32)


def select_tiles(
    grid: TileGrid,
    tissue: np.ndarray | None,
    mpp: float,
    thumb_mpp: float,
    min_fraction: float = 0.0,
) -> list[TileRC]:
    """The tiles to run, in row-major order: those whose model-frame box touches tissue.

    ``tissue``: bool ``[thumb_h, thumb_w]`` tissue mask in the thumbnail frame (``thumb_mpp`` um/px), or None
    for every tile. ``mpp``: the model frame's um/px. A tile is kept when the tissue fraction of its box,
    mapped onto the thumbnail (covering it), is above ``min_fraction`` (0: any tissue pixel).
    """
    if tissue is None:
        return list(grid.tiles())
    from slidefuse.runtime.tissue import tiles_touching_tissue

    keep = tiles_touching_tissue(tissue, grid.tile_boxes(), mpp, thumb_mpp, min_fraction)
    selected = [rc for rc, k in zip(grid.tiles(), keep, strict=True) if k]
    log.debug("tile selection: %d of %d tiles touch tissue", len(selected), grid.n_tiles)
    return selected
