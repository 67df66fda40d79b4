"""Regions of interest on a pixel grid: the thumbnail's (tile selection), the model's (the keep mask and the areas
per region), band by band.

`PolygonRaster` fills polygons by pixel centre (pixel (x, y) is inside when its centre (x + 0.5, y + 0.5) is),
even-odd over every ring, so holes stay holes. It rasterises one band of rows at a time from the polygons' edges
(a scanline fill: each edge crossing a row's centre line toggles the row from there on), so memory is the band
and the edges crossing it, never a whole-slide raster at the model's pixel size. It is exact: the same pixels as
shapely's `contains_xy` at the pixel centres (checked in the tests), at any resolution, whatever the regions'
size or shape.

`SlideRegions` holds a slide's placed regions (level 0) and gives:

- `thumb_mask(shape)`: the thumbnail pixels any region touches (the union grown by 0.75 thumbnail px, so a
  region thinner than a thumbnail pixel still selects the tiles under it), ANDed into the tissue mask before
  tiles are chosen;
- `keep()`: the union of the regions in the model frame, a `KeepMask` for the stitcher (0 outside);
- `count(raw_path, ...)`: per region, the mask pixels of each class inside it, read band by band from the raw
  mask. Overlapping regions each count their own pixels, so a pixel in two regions counts in both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slidefuse.runtime.keep import KeepMask
from slidefuse.runtime.roi import Region, RoiFile, place, read_roi
from slidefuse.runtime.types import RegionPixels, RegionsResult

TOUCH_PX = 0.75  # thumbnail px the regions grow by before tile selection (> sqrt(2) / 2: every touched pixel)
LOOP_SPANS = 8192  # up to this many inside spans in a band, each is set on its own; beyond, a toggle-and-xor pass
BAND_BYTES = 16 << 20  # bytes of raw mask read at a time by `SlideRegions.count`


def ring_edges(geometry: Any, sx: float, sy: float) -> np.ndarray:
    """float64 ``[n, 4]`` edges ``(xa, ya, xb, yb)`` of every ring of a (Multi)Polygon, scaled by (sx, sy);
    horizontal edges (never crossing a row centre line) are left out."""
    import shapely

    polygons = shapely.get_parts(geometry)
    rings = shapely.get_rings(polygons)
    xy, ring = shapely.get_coordinates(rings, return_index=True)
    if len(xy) < 2:
        return np.zeros((0, 4))
    xy = xy * (sx, sy)
    same = ring[1:] == ring[:-1]  # consecutive vertices of one (closed) ring
    edges = np.concatenate([xy[:-1][same], xy[1:][same]], axis=1)
    return edges[edges[:, 1] != edges[:, 3]]


class PolygonRaster:
    """A (Multi)Polygon on a pixel grid, band by band: ``rows(y0, y1, width)`` is bool ``[y1 - y0, width]``,
    True where the pixel centre is inside. ``scale`` = (sx, sy): grid px per geometry unit."""

    def __init__(self, geometry: Any, scale: tuple[float, float]) -> None:
        edges = ring_edges(geometry, *scale)
        self._xa, self._ya, self._xb, self._yb = edges.T
        self._ylo = np.minimum(self._ya, self._yb)
        self._yhi = np.maximum(self._ya, self._yb)
        # rows whose centre line (r + 0.5) each edge crosses: [first, stop), ends half-open (a vertex counts once)
        self._first = np.ceil(self._ylo - 0.5).astype(np.int64)
        self._stop = np.ceil(self._yhi - 0.5).astype(np.int64)
        self.row_span = (int(self._first.min()), int(self._stop.max())) if len(edges) else (0, 0)
        xs = np.concatenate([self._xa, self._xb])
        # columns whose centre can be inside: [first, stop)
        self.col_span = (int(np.ceil(xs.min() - 0.5)), int(np.ceil(xs.max() - 0.5))) if len(edges) else (0, 0)

    def window(self, width: int) -> tuple[int, int]:
        """Columns ``[x0, x1)`` of a grid ``width`` px wide where pixels can be inside (x1 <= x0: none)."""
        return max(self.col_span[0], 0), min(self.col_span[1], width)

    def rows(self, y0: int, y1: int, width: int) -> np.ndarray:
        out = np.zeros((max(y1 - y0, 0), width), dtype=bool)
        x0, x1 = self.window(width)
        if x1 > x0:
            out[:, x0:x1] = self.rows_in(y0, y1, x0, x1)
        return out

    def rows_in(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """bool ``[y1 - y0, x1 - x0]``: rows ``y0..y1`` of `rows`, columns ``x0..x1`` (within `window`)."""
        width = x1 - x0
        lo, hi = np.maximum(self._first, y0), np.minimum(self._stop, y1)
        sel = np.flatnonzero(hi > lo)
        if len(sel) == 0:
            return np.zeros((max(y1 - y0, 0), width), dtype=bool)
        lo, n = lo[sel], (hi - lo)[sel]
        edge = np.repeat(sel, n)
        row = np.repeat(lo, n) + (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n))
        yc = row + 0.5
        xa, ya = self._xa[edge], self._ya[edge]
        x = xa + (yc - ya) * (self._xb[edge] - xa) / (self._yb[edge] - ya)
        order = np.lexsort((x, row))
        row, x = row[order], x[order]
        # each row crosses an even number of edges: pairs (start, end) in x order bound the inside spans
        cols = np.clip(np.ceil(x - 0.5) - x0, 0, width).astype(np.int64)  # first pixel whose centre is >= x
        if len(cols) // 2 <= LOOP_SPANS:  # few spans: set each one (much cheaper than a pass over every pixel)
            inside = np.zeros((y1 - y0, width), dtype=bool)
            for r, a, b in zip((row[0::2] - y0).tolist(), cols[0::2].tolist(), cols[1::2].tolist(), strict=True):
                inside[r, a:b] = True
            return inside
        toggles = np.zeros((y1 - y0, width + 1), dtype=np.uint8)
        np.bitwise_xor.at(toggles, (row - y0, cols), 1)
        filled: np.ndarray = np.bitwise_xor.accumulate(toggles, axis=1)[:, :width].astype(bool)
        return filled


@dataclass(frozen=True)
class _Union:
    """The keep mask of the union of the regions (a `KeepMask`)."""

    raster: PolygonRaster

    def rows(self, y0: int, y1: int, width: int) -> np.ndarray:
        return self.raster.rows(y0, y1, width)


@dataclass(frozen=True)
class SlideRegions:
    """A regions file placed on one slide: level-0 geometries and the sizes of the frames they map onto."""

    source: RoiFile
    regions: tuple[Region, ...]  # level-0 px, clipped to the slide
    l0_size: tuple[int, int]  # (width, height) of level 0
    model_size: tuple[int, int]  # (width, height) of the model frame
    offset_l0: tuple[float, float]  # origin of the GeoJSON's frame in level-0 px ((0, 0) for a mask image)
    _union: list[Any] = field(default_factory=list, compare=False, repr=False)

    def union(self) -> Any:
        import shapely

        if not self._union:
            self._union.append(shapely.union_all([r.geometry for r in self.regions]))
        return self._union[0]

    def _scale(self, size: tuple[int, int]) -> tuple[float, float]:
        return size[0] / self.l0_size[0], size[1] / self.l0_size[1]

    def thumb_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """bool ``[h, w]`` (``shape``, the thumbnail's): the thumbnail pixels a region touches."""
        h, w = shape
        sx, sy = self._scale((w, h))
        grown = self.union().buffer(TOUCH_PX / min(sx, sy), quad_segs=4)
        return PolygonRaster(grown, (sx, sy)).rows(0, h, w)

    def keep(self) -> KeepMask:
        """The union of the regions in the model frame, for the stitcher (pixels outside become class 0)."""
        return _Union(PolygonRaster(self.union(), self._scale(self.model_size)))

    def count(self, raw_path: Path, num_classes: int) -> RegionsResult:
        """Pixels of each class inside each region, from the raw mask (uint8, row-major, the model frame), read
        band by band (BAND_BYTES at a time)."""
        width, height = self.model_size
        scale = self._scale(self.model_size)
        rasters = [PolygonRaster(r.geometry, scale) for r in self.regions]
        counts = np.zeros((len(rasters), num_classes), dtype=np.int64)
        step = max(1, BAND_BYTES // max(width, 1))
        raw = np.memmap(raw_path, dtype=np.uint8, mode="r", shape=(height, width))
        try:
            for y0 in range(0, height, step):
                y1 = min(y0 + step, height)
                band = None
                for k, raster in enumerate(rasters):
                    (first, stop), (x0, x1) = raster.row_span, raster.window(width)
                    if stop <= y0 or first >= y1 or x1 <= x0:
                        continue
                    band = np.asarray(raw[y0:y1]) if band is None else band
                    inside = raster.rows_in(y0, y1, x0, x1)
                    counts[k] += np.bincount(band[:, x0:x1][inside], minlength=num_classes)[:num_classes]
        finally:
            del raw
        items = tuple(RegionPixels(r.index, r.name, int(c.sum()), c, r.feature_id)
                      for r, c in zip(self.regions, counts, strict=True))
        return RegionsResult(str(self.source.path), self.source.kind, self.source.digest, self.offset_l0, items)


def load_regions(path: Path, slide: Any, model_size: tuple[int, int], frame: str) -> SlideRegions:
    """Read the regions file `path` and place it on `slide` (a SlideInfo): GeoJSON coordinates in `frame`
    ("qupath" or "level0", as mask.geojson's), mask images from level-0 pixel (0, 0)."""
    from slidefuse.runtime.outputs.geojson import frame_offset

    roi = read_roi(Path(path))
    offset = frame_offset(slide, frame)[0] if roi.kind == "geojson" else (0.0, 0.0)
    regions = place(roi, (slide.width, slide.height), slide.mpp, offset)
    return SlideRegions(roi, regions, (slide.width, slide.height), model_size, offset)
