"""Band-by-band stitching of overlapping tile probabilities into a raw uint8 class-index file on disk.

Tiles arrive in row-major grid order (only the tiles that ran; the positions in between are empty). The
stitcher keeps just the blended probability sums that later tiles still add to:

- ``right``: the current tile's contribution to the first ``o`` columns of the next cell on its row,
  float32 ``[C, T, o]`` (rows ``T``: it also holds the corner that belongs to the next tile row);
- ``bottom``: the current tile row's contribution to the first ``o`` rows of the next tile row,
  float32 ``[C, o, width + 2 * margin]`` (the padded frame, see ``grid``);
- ``band``: finished class indices of the current tile row, uint8 ``[<= T, width]``, written to disk when the
  row is done.

So memory is ``C * o * width * 4 + T * width`` bytes plus one tile, never a band of ``T x width`` floats, and
nothing grows with the slide's height. A cell ``(r, c)`` (see ``grid``) is final once tile ``(r, c)`` has been
processed (or skipped), because the other tiles that cover it come earlier in row-major order.

Blending: each tile's probabilities are multiplied by the blend window and summed; the class is the argmax of
the sum (dividing by the summed weights would not change it). Pixels no tile covered sum to zero everywhere
and get class 0 (background), which is what ``argmax`` returns for ties.

Cost per tile: only the frame of a cell where the window is below 1 or a neighbour adds to the sum is
weighted and summed (the same arithmetic, in the same order, as a whole-cell sum). The cell's interior, where
the window is exactly 1 and only this tile contributes, is the argmax of the probabilities themselves, and that
argmax (most of a tile's pixels) runs on ``threads`` worker threads (numpy releases the GIL), so stitching
scales with cores. A band is written to disk once every interior job of its tile row is done.

Probabilities (``probs_path``, optional): the same cells also give each pixel's blended probabilities normalised
by the summed blend weights, quantised to uint8 and streamed to a second raw file (see ``stitch_probs``); the
interior is the tile's own probabilities, quantised on the same worker thread as its argmax.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np

from slidefuse.runtime.grid import TileGrid, TileRC, blend_window
from slidefuse.runtime.keep import KeepMask
from slidefuse.runtime.stitch_probs import ProbabilityBand

log = logging.getLogger(__name__)


class Stitcher:
    """Stitch tile probabilities into ``raw_path``: uint8 class indices, row-major, ``width * height`` bytes,
    in the model frame of ``grid``. Feed tiles with ``add`` in row-major order, then call ``finish``.
    Use as a context manager (closes the file on error). ``keep``: pixels it does not keep (see ``keep``) are
    written as class 0 and counted as such. ``probs_path``: also write the blended probabilities there, uint8
    ``[height, width, C]`` interleaved, round(p * 255), 0 where no tile ran or ``keep`` drops the pixel."""

    def __init__(self, grid: TileGrid, num_classes: int, raw_path: Path, threads: int = 1,
                 keep: KeepMask | None = None, probs_path: Path | None = None) -> None:
        if not 1 <= num_classes <= 256:
            raise ValueError(f"num_classes must be 1..256 to fit uint8 class indices, got {num_classes}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.grid = grid
        self.num_classes = num_classes
        self.raw_path = Path(raw_path)
        t, o, w = grid.tile, grid.overlap, grid.width
        self.window = blend_window(t, o)  # float32 [T, T]
        self.bottom = np.zeros((num_classes, o, grid.padded_width), dtype=np.float32)  # next row's top o rows
        self.bottom_has = np.zeros(grid.n_cols, dtype=bool)  # column c of `bottom` holds data
        self.right = np.zeros((num_classes, t, o), dtype=np.float32)  # sums for the next cell's left o columns
        self.right_has = False
        self.band = np.zeros((t, w), dtype=np.uint8)  # class indices of the current tile row
        self.class_pixels = np.zeros(num_classes, dtype=np.int64)
        self.keep = keep
        self._rows_written = 0  # model-frame rows already flushed
        self.tiles_added = 0
        self.seconds = 0.0  # time spent in add/finish
        self._next = 0  # row-major index of the next grid position to process
        self._file: BinaryIO | None = open(self.raw_path, "wb")  # closed in finish/close
        self.probs: ProbabilityBand | None = None
        if probs_path is not None:
            self.probs = ProbabilityBand(probs_path, num_classes, t, o, w, grid.padded_width)
        self._done = False
        lo, hi = o, t - o  # tile-frame span where the blend window is exactly 1
        self._pure = (lo, hi)
        # interior argmax jobs of the current tile row (threads > 1), waited for before the band is written
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="slidefuse-stitch") if threads > 1 else None
        self._jobs: list[Future[None]] = []

    # ---------------------------------------------------------------------------------------- public API
    def accumulator_bytes(self) -> int:
        """Bytes held in the stitcher's persistent buffers (probability sums and the uint8 band)."""
        probs = self.probs.nbytes() if self.probs is not None else 0
        return int(self.bottom.nbytes + self.right.nbytes + self.band.nbytes + self.window.nbytes + probs)

    def add(self, tile_rc: TileRC, probs: np.ndarray) -> None:
        """Add one tile's probabilities: float32 ``[C, T, T]`` (tile frame, rows = y), ``tile_rc`` in row-major
        order after the previous call. Grid positions skipped since the previous call contribute nothing."""
        t0 = time.perf_counter()
        r, c = tile_rc
        g = self.grid
        if not (0 <= r < g.n_rows and 0 <= c < g.n_cols):
            raise ValueError(f"tile {tile_rc} is outside the {g.n_rows} x {g.n_cols} grid")
        index = r * g.n_cols + c
        if index < self._next or self._done:
            raise ValueError(f"tiles must be added once each in row-major order: got {tile_rc} after "
                             f"position {self._next - 1}")
        if probs.shape != (self.num_classes, g.tile, g.tile):
            raise ValueError(f"tile probabilities must be [{self.num_classes}, {g.tile}, {g.tile}], "
                             f"got {list(probs.shape)}")
        while self._next < index:
            self._process(self._next, None)
        self._process(index, probs.astype(np.float32, copy=False))
        self.tiles_added += 1
        self.seconds += time.perf_counter() - t0

    def finish(self) -> None:
        """Process the remaining (empty) positions, write the last band and close the file."""
        t0 = time.perf_counter()
        if self._done:
            return
        while self._next < self.grid.n_tiles:
            self._process(self._next, None)
        self.close()
        self._done = True
        self.seconds += time.perf_counter() - t0
        expected = self.grid.width * self.grid.height
        if int(self.class_pixels.sum()) != expected:
            raise RuntimeError(f"stitcher wrote {int(self.class_pixels.sum())} pixels, expected {expected}")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.probs is not None:
            self.probs.close()

    def __enter__(self) -> Stitcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------- internals
    def _process(self, index: int, probs: np.ndarray | None) -> None:
        """Finalise cell ``index`` (row-major) with its tile's probabilities ``[C, T, T]`` (or None: no tile)
        and pass the tile's weighted overlap parts on to ``right`` / ``bottom``. Cells are in the padded frame;
        only their part inside the model frame is written."""
        g = self.grid
        r, c = divmod(index, g.n_cols)
        s, o = g.stride, g.overlap
        x0, x1 = g.col_span(c)  # padded frame
        last_col, last_row = c == g.n_cols - 1, r == g.n_rows - 1
        from_left = c > 0 and self.right_has
        from_top = r > 0 and bool(self.bottom_has[c])
        self._label_cell(r, c, probs, from_left, from_top)
        # this row's contribution to the next row's top o rows of this column (+ the left tile's corner)
        if not last_row and o > 0:
            cw = x1 - x0
            if probs is not None:
                self.bottom[:, :, x0:x1] = probs[:, s : s + o, :cw] * self.window[s : s + o, :cw]
            elif from_left:
                self.bottom[:, :, x0:x1] = 0.0
            if from_left:
                self.bottom[:, :, x0 : x0 + o] += self.right[:, s : s + o, :]
            self.bottom_has[c] = probs is not None or from_left
            if self.probs is not None:
                self._bottom_weights(self.probs.bottom_w, x0, x1, probs is not None, from_left)
        # this tile's contribution to the next cell's left o columns
        if not last_col and o > 0:
            if probs is not None:
                np.multiply(probs[:, :, s : s + o], self.window[:, s : s + o], out=self.right)
            self.right_has = probs is not None
        self._next = index + 1
        if last_col:
            self._flush_band(self._cell_rows(r))
            self.right_has = False

    def _bottom_weights(self, bottom_w: np.ndarray, x0: int, x1: int, has_tile: bool, from_left: bool) -> None:
        """The blend weights behind ``bottom[:, :, x0:x1]`` into ``bottom_w``: this tile's window, plus the left
        tile's corner."""
        s, o = self.grid.stride, self.grid.overlap
        if has_tile:
            bottom_w[:, x0:x1] = self.window[s : s + o, : x1 - x0]
        elif from_left:
            bottom_w[:, x0:x1] = 0.0
        if from_left:
            bottom_w[:, x0 : x0 + o] += self.window[s : s + o, s : s + o]

    def _cell_rows(self, r: int) -> int:
        """Rows of cell row ``r`` inside the model frame."""
        g = self.grid
        y0, y1 = g.row_span(r)
        return min(max(g.margin + g.height - y0, 0), y1 - y0) - min(max(g.margin - y0, 0), y1 - y0)

    def _label_cell(self, r: int, c: int, probs: np.ndarray | None, from_left: bool, from_top: bool) -> None:
        """Class indices of cell ``(r, c)``'s part inside the model frame, into ``band``."""
        g = self.grid
        x0, x1 = g.col_span(c)
        y0, y1 = g.row_span(r)
        cw, ch, m = x1 - x0, y1 - y0, g.margin
        ax0, ax1 = min(max(m - x0, 0), cw), min(max(m + g.width - x0, 0), cw)  # visible part, cell coords
        ay0, ay1 = min(max(m - y0, 0), ch), min(max(m + g.height - y0, 0), ch)
        if ax1 <= ax0 or ay1 <= ay0:
            return
        fx0 = x0 + ax0 - m  # model-frame x of the visible part
        if probs is None and not (from_left or from_top):
            self.band[: ay1 - ay0, fx0 : fx0 + ax1 - ax0] = 0
            if self.probs is not None:
                self.probs.clear(0, ay1 - ay0, fx0, fx0 + ax1 - ax0)
            return
        # interior: window 1 and no neighbour, so the argmax of the probabilities themselves
        lo, hi = self._pure
        iy0, iy1 = max(lo, ay0), min(hi, ay1)
        ix0, ix1 = max(lo, ax0), min(hi, ax1)
        interior = probs is not None and iy1 > iy0 and ix1 > ix0
        if interior:
            self._interior(probs, (iy0, iy1, ix0, ix1), ay0, fx0 - ax0)  # type: ignore[arg-type]
        else:
            iy0 = iy1 = ix0 = ix1 = ay0
        # the frame around it: weighted, plus what the left and upper neighbours left in `right` / `bottom`
        for ry0, ry1, rx0, rx1 in ((ay0, iy0, ax0, ax1), (iy1, ay1, ax0, ax1), (iy0, iy1, ax0, ix0),
                                   (iy0, iy1, ix1, ax1)):
            if ry1 > ry0 and rx1 > rx0:
                box = (ry0, ry1, rx0, rx1)
                acc = self._blended(probs, x0, box, from_left, from_top)
                self.band[ry0 - ay0 : ry1 - ay0, fx0 - ax0 + rx0 : fx0 - ax0 + rx1] = argmax_classes(acc)
                if self.probs is not None:
                    weights = self._weights(self.probs.bottom_w, probs is not None, x0, box, from_left, from_top)
                    self.probs.put_blended(acc, weights, ry0 - ay0, fx0 - ax0 + rx0)

    def _interior(self, probs: np.ndarray, box: tuple[int, int, int, int], ay0: int, bx: int) -> None:
        """argmax of ``probs`` over cell box ``(y0, y1, x0, x1)`` into ``band`` (on the pool when there is one)."""
        y0, y1, x0, x1 = box

        def job() -> None:
            self.band[y0 - ay0 : y1 - ay0, bx + x0 : bx + x1] = argmax_classes(probs[:, y0:y1, x0:x1])
            if self.probs is not None:
                self.probs.put(probs[:, y0:y1, x0:x1], y0 - ay0, bx + x0)

        if self._pool is None:
            job()
        else:
            self._jobs.append(self._pool.submit(job))

    def _blended(self, probs: np.ndarray | None, x0: int, box: tuple[int, int, int, int], from_left: bool,
                 from_top: bool) -> np.ndarray:
        """float32 ``[C, h, w]`` blended sums over cell box ``(y0, y1, x0, x1)``: the tile's weighted
        probabilities, then the left neighbour's strip, then the upper row's strip (the order of a whole-cell
        sum, so results are bit-identical to it)."""
        y0, y1, bx0, bx1 = box
        o = self.grid.overlap
        if probs is not None:
            acc = probs[:, y0:y1, bx0:bx1] * self.window[y0:y1, bx0:bx1]
        else:
            acc = np.zeros((self.num_classes, y1 - y0, bx1 - bx0), dtype=np.float32)
        if from_left and bx0 < o:
            acc[:, :, : min(bx1, o) - bx0] += self.right[:, y0:y1, bx0 : min(bx1, o)]
        if from_top and y0 < o:
            acc[:, : min(y1, o) - y0, :] += self.bottom[:, y0 : min(y1, o), x0 + bx0 : x0 + bx1]
        return acc

    def _weights(self, bottom_w: np.ndarray, has_tile: bool, x0: int, box: tuple[int, int, int, int],
                 from_left: bool, from_top: bool) -> np.ndarray:
        """float32 ``[h, w]``: the summed blend weights behind `_blended`'s sums over the same cell box
        (``bottom_w``: the upper tile row's weights)."""
        y0, y1, bx0, bx1 = box
        s, o = self.grid.stride, self.grid.overlap
        if has_tile:
            weights = self.window[y0:y1, bx0:bx1].copy()
        else:
            weights = np.zeros((y1 - y0, bx1 - bx0), dtype=np.float32)
        if from_left and bx0 < o:
            weights[:, : min(bx1, o) - bx0] += self.window[y0:y1, s + bx0 : s + min(bx1, o)]
        if from_top and y0 < o:
            weights[: min(y1, o) - y0, :] += bottom_w[y0 : min(y1, o), x0 + bx0 : x0 + bx1]
        return weights

    def _flush_band(self, rows: int) -> None:
        jobs, self._jobs = self._jobs, []
        for job in jobs:  # the row's interior argmax jobs write into the band
            job.result()
        if rows <= 0:
            return
        band = self.band[:rows]
        kept = None
        if self.keep is not None:
            y0 = self._rows_written
            kept = self.keep.rows(y0, y0 + rows, self.grid.width)
            band[~kept] = 0
        if self.probs is not None:
            self.probs.write(rows, kept)
        self._rows_written += rows
        for k in range(self.num_classes):  # C fast comparisons beat bincount's conversion to intp
            self.class_pixels[k] += np.count_nonzero(band == k)
        if self._file is None:
            raise RuntimeError(f"{self.raw_path}: stitcher file already closed")
        self._file.write(np.ascontiguousarray(band).data)


def argmax_classes(scores: np.ndarray) -> np.ndarray:
    """Index of the largest score over axis 0: float32 ``[C, h, w]`` -> uint8 ``[h, w]``; ties go to the lowest
    index (so all-zero pixels are class 0). Same result as ``np.argmax(scores, axis=0)``, but a few running
    comparisons over whole planes instead of numpy's strided reduction over axis 0 (about 10x slower)."""
    best = scores[0].copy()
    index = np.zeros(best.shape, dtype=np.uint8)
    for k in range(1, scores.shape[0]):
        better = (scores[k] > best).view(np.uint8)  # 1 where class k wins so far
        index += better * (np.uint8(k) - index)  # branch-free select (masked writes are ~10x slower)
        np.maximum(best, scores[k], out=best)
    return index

