"""Regions of a class grid without its full label image: labelled band by band of rows and merged at the seams
(`Regions`), then handed out in batches of regions whose windows are bounded (`region_batches`).

Memory: one band's labels (`LABEL_BAND_PIXELS`, 16 MB) plus 40 bytes per region part; a batch's window is
labelled on its own (`Regions.batch_labels`), so polygonising batch by batch costs the largest batch, never the
whole grid's regions at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

BATCH_PIXELS = 1 << 22  # regions polygonised together: at most this many bounding-box pixels per batch
BATCH_REGIONS = 4096  # ... and at most this many regions (each costs about 2 KB of geometry objects)
BAND_PIXELS = 1 << 20  # label-image pixels scanned at a time for first pixels and boxes
LABEL_BAND_PIXELS = 1 << 22  # grid pixels labelled at a time (16 MB of int32 labels)


@dataclass(frozen=True)
class Regions:
    """The 4-connected regions of a bool [h, w] mask, without their label image: for region i + 1 (scipy's
    labels, from 1), the flat index of its first pixel in raster order and its bounding box."""

    shape: tuple[int, int]
    first: np.ndarray  # int64 [n]: row * w + col of each region's first pixel
    boxes: np.ndarray  # int64 [n, 4]: row start, row stop, col start, col stop (stops exclusive)

    @classmethod
    def of(cls, grid: np.ndarray, value: Any = True) -> Regions:
        """The regions of `grid == value` (a bool mask with the default), labelled band by band of rows and
        merged across band seams, so that neither a full-grid mask nor a full label image is ever made: memory
        is one band's labels (`LABEL_BAND_PIXELS`) plus 40 bytes per region part (a part per band it crosses).

        Numbering is scipy's for the whole mask (`ndimage.label`: raster order of first pixels), which the
        tests check."""
        from scipy import ndimage

        h, w = grid.shape
        band_rows = max(1, LABEL_BAND_PIXELS // max(w, 1))
        firsts, boxes, seams = [], [], []
        parts = 0  # parts found so far (part ids: band order, then raster order within the band)
        above: np.ndarray | None = None  # global part ids of the previous band's last row (-1: none)
        for r0 in range(0, h, band_rows):
            labels, n = ndimage.label(grid[r0:r0 + band_rows] == value)
            first, box = _scan_labels(labels, n)
            first += r0 * w
            box[:, :2] += r0
            ids = labels[0].astype(np.int64) + parts - 1
            if above is not None:
                touch = (above >= 0) & (labels[0] > 0)  # 4-connected across the seam: vertical neighbours
                seams.append(np.unique(np.stack([above[touch], ids[touch]]), axis=1))
            above = np.where(labels[-1] > 0, labels[-1].astype(np.int64) + parts - 1, -1)
            del labels
            firsts.append(first)
            boxes.append(box)
            parts += n
        return cls._merged((h, w), np.concatenate(firsts) if firsts else np.empty(0, np.int64),
                           np.concatenate(boxes) if boxes else np.empty((0, 4), np.int64), seams)

    @classmethod
    def _merged(cls, shape: tuple[int, int], first: np.ndarray, boxes: np.ndarray,
                seams: list[np.ndarray]) -> Regions:
        """Regions from band parts (in raster order of first pixels) and the part pairs that touch at seams."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        n_parts = len(first)
        pairs = np.concatenate(seams, axis=1) if seams else np.empty((2, 0), np.int64)
        if pairs.shape[1] == 0:
            return cls(shape, first, boxes)
        graph = coo_matrix((np.ones(pairs.shape[1], np.int8), (pairs[0], pairs[1])), shape=(n_parts, n_parts))
        _, comp = connected_components(graph, directed=False)
        # A region's first pixel is its earliest part's; regions are numbered in the order of those parts.
        lead = np.full(comp.max() + 1, n_parts, dtype=np.int64)
        np.minimum.at(lead, comp, np.arange(n_parts))
        rank = np.empty(len(lead), dtype=np.int64)
        rank[np.argsort(lead)] = np.arange(len(lead))
        region = rank[comp]
        merged = np.empty((len(lead), 4), dtype=np.int64)
        merged[:, 0] = merged[:, 2] = np.iinfo(np.int64).max
        merged[:, 1] = merged[:, 3] = -1
        for j, ufunc in enumerate((np.minimum, np.maximum, np.minimum, np.maximum)):
            ufunc.at(merged[:, j], region, boxes[:, j])
        return cls(shape, first[np.sort(lead)], merged)

    def batch_labels(self, fg_window: np.ndarray, lo: int, hi: int, origin: tuple[int, int]) -> np.ndarray:
        """Of the mask's window `fg_window` whose top-left pixel is `origin` (row, col), the regions lo..hi
        (which lie wholly inside it) labelled 1..hi-lo+1 in the same order, 0 elsewhere: the labels
        `ndimage.label` gives the batch's own mask, in uint16 where they fit (2 bytes per window pixel).

        The window is labelled on its own: a region lies wholly inside the window, so the window's component
        holding its first pixel is that region, whole."""
        from scipy import ndimage

        local, n_local = ndimage.label(fg_window)
        r, c = np.divmod(self.first[lo - 1:hi], self.shape[1])
        lut = np.zeros(n_local + 1, dtype=np.uint16 if hi - lo + 1 < 2**16 else np.int32)
        lut[local[r - origin[0], c - origin[1]]] = np.arange(1, hi - lo + 2)
        out: np.ndarray = lut[local]
        return out


def _scan_labels(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(first, boxes) of labels 1..n of a label image (see `Regions`), scanned band by band (bounded memory).

    scipy numbers labels in raster order of their first pixels, so the first pixels are exactly where a label
    exceeds every label before it; checked, as the batches rely on that order."""
    h, w = labels.shape
    first = np.full(n, -1, dtype=np.int64)
    boxes = np.empty((n, 4), dtype=np.int64)
    boxes[:, 1] = boxes[:, 3] = -1
    boxes[:, 2] = w
    seen = 0  # the largest label so far
    band_rows = max(1, BAND_PIXELS // max(w, 1))
    for r0 in range(0, h, band_rows):
        band = labels[r0:r0 + band_rows].ravel()
        at = np.flatnonzero(band)
        lab = band[at].astype(np.int64) - 1
        new = np.flatnonzero(lab >= np.maximum.accumulate(np.r_[seen - 1, lab[:-1]]) + 1) if len(lab) else at[:0]
        if len(new) and (lab[new[0]] != seen or (np.diff(lab[new]) != 1).any()):
            raise RuntimeError("polygonisation: labels are not in raster order; please report this as a bug")
        first[lab[new]] = r0 * w + at[new]
        seen += len(new)
        row, col = np.divmod(at, w)
        np.maximum.at(boxes[:, 1], lab, row + r0 + 1)
        np.minimum.at(boxes[:, 2], lab, col)
        np.maximum.at(boxes[:, 3], lab, col + 1)
    if seen != n:
        raise RuntimeError(f"polygonisation: found {seen} of {n} regions; please report this as a bug")
    boxes[:, 0] = first // w
    return first, boxes


def region_batches(boxes: np.ndarray, budget_px: int = BATCH_PIXELS,
                   max_regions: int = BATCH_REGIONS) -> Iterator[tuple[int, int, tuple[slice, slice]]]:
    """Consecutive runs of region labels, (first, last, window), at most `max_regions` long, whose bounding
    boxes (`boxes[label - 1]`: row start, row stop, col start, col stop) and their union, `window`, each hold
    at most `budget_px` pixels (a larger region is a batch of its own). A batch costs about 10 bytes per window
    pixel plus about 80 bytes per boundary edge.

    Labels are numbered in raster order, so a run's regions lie in a band of rows, and polygonising run by run
    yields the regions in the same order as polygonising the whole mask at once, with memory bounded by the
    batch instead of by the number of regions on the slide."""
    first, cost = 1, 0
    r0 = c0 = 1 << 62
    r1 = c1 = 0
    for lab, (rs, re, cs, ce) in enumerate(boxes.tolist(), start=1):
        area = (re - rs) * (ce - cs)
        union = (max(r1, re) - min(r0, rs)) * (max(c1, ce) - min(c0, cs))  # the window with this region added
        if lab > first and (max(cost + area, union) > budget_px or lab - first >= max_regions):
            yield first, lab - 1, (slice(r0, r1), slice(c0, c1))
            first, cost = lab, 0
            r0 = c0 = 1 << 62
            r1 = c1 = 0
        cost += area
        r0, r1, c0, c1 = min(r0, rs), max(r1, re), min(c0, cs), max(c1, ce)
    if len(boxes) >= first:
        yield first, len(boxes), (slice(r0, r1), slice(c0, c1))
