"""`mask.geojson`: one QuPath annotation per connected region of each non-background class.

Polygonisation is exact on the pixel grid, then simplified:

1. For each class, the boundary between its pixels and the rest is a set of unit edges along pixel sides
   (grid vertices are pixel corners, `grid_xy`). Each edge is directed with the class on its right (on
   screen, y down), so every region's outer ring runs clockwise on screen and every hole ring
   counter-clockwise.
2. Edges are chained into rings by a vectorised successor lookup: at each vertex the ring turns right if it
   can, else goes straight, else turns left. Turning right first makes regions 4-connected (pixels that
   touch only diagonally are separate regions), which keeps every ring simple, so polygons are valid
   (rings of a polygon may touch at a vertex, which OGC allows).
3. Rings are ordered by list ranking (pointer jumping), and grouped into polygons by the
   connected-component label of the pixel they enclose (`scipy.ndimage.label`, 4-conn.): the ring with
   positive area is the shell, the others its holes. Ring vertices are the midpoints of the pixel sides
   (next to turns), so staircases become straight lines and every pixel centre stays on its side.
4. Polygons are simplified with a tolerance of half a grid pixel (topology-preserving), scaled to
   slide level-0 pixels (`l0_xy = grid_xy * slide size / grid size`), checked with `is_valid` and repaired
   with `make_valid` where simplification or rounding broke one.

Frame: `level0` writes slide level-0 pixel coordinates. `qupath` (the default) writes QuPath's frame: QuPath
crops a slide with `openslide.bounds-x` / `openslide.bounds-y` (MIRAX, some others) to those bounds, so its
pixel (0, 0) is level-0 pixel (bounds-x, bounds-y), and the offset is subtracted (`frame_offset`); on a slide
without bounds the two frames are the same. report.json records the frame and the offset.

Bounded memory and time: the grid is the mask itself when it holds at most `max_pixels` pixels, else the
mask reduced to that many pixels by an integer block mode (streamed band by band from the raw file), read into
one array with plain file reads (`class_grid`); the report records the grid's resolution. Each class is
labelled band by band of rows and merged at the seams (`Regions`: one band's labels, 16 MB, plus 40 bytes per
region; no full-grid mask or label image), and its regions are polygonised in batches whose windows are
bounded (`region_batches`), each window labelled on its own: about 10 bytes per window pixel plus about 80
bytes per boundary edge of the batch. Memory is then the grid (1 byte per pixel) plus the largest batch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slidefuse.atomic import atomic_path
from slidefuse.errors import UsageError
from slidefuse.runtime.bundle import ClassInfo
from slidefuse.runtime.outputs.base import (
    GEOJSON_FRAMES,
    GEOJSON_MAX_PIXELS,
    OutputContext,
    OutputOptions,
    OutputRecord,
)
from slidefuse.runtime.outputs.raster import class_grid, grid_size_for
from slidefuse.runtime.types import MaskResult, SlideInfo

logger = logging.getLogger(__name__)

MAX_PIXELS = GEOJSON_MAX_PIXELS  # default cap on the polygonised grid (67 Mpx, e.g. 8192 x 8192)
SIMPLIFY_PX = 0.5  # Douglas-Peucker tolerance in grid px (within one output pixel); 1.0 loses thin regions
DECIMALS = 2  # decimals of level-0 coordinates in the file

# Edge directions, clockwise on screen (y down): east, south, west, north. Turning right is d + 1.
_DX = np.array([1, 0, -1, 0], dtype=np.int8)
_DY = np.array([0, 1, 0, -1], dtype=np.int8)
_COORD = np.int32  # grid coordinates and edge indices (about 100 bytes per boundary edge in all; see _index_type)


def _index_type(n: int) -> type[np.signedinteger[Any]]:
    """int32 for edge indices while they fit (halves the memory of ring ranking), else int64."""
    return np.int32 if n < 2**31 - 1 else np.int64


def _boundary_edges(fg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directed unit boundary edges of a bool [h, w] mask, the class on each edge's right (y down).

    Returns (x0, y0, d): start vertex in grid_xy (pixel corners, int32) and direction (int8: 0 E, 1 S, 2 W,
    3 N), 9 bytes per edge; the foreground pixel an edge borders is (`_pixel_of`).
    """
    h, w = fg.shape
    if max(h, w) >= 2**31 - 2:
        raise UsageError(f"polygonisation: a {w} x {h} grid is too large; lower --geojson-max-pixels")
    pad = np.zeros((h + 2, w + 2), dtype=bool)
    pad[1:-1, 1:-1] = fg
    core = pad[1:-1, 1:-1]
    # One scan of the whole grid for the pixels with a background 4-neighbour; the four sides are then
    # tested on those pixels alone (row-major order within each side, as a per-side scan would give).
    inner = core & pad[:-2, 1:-1]
    inner &= pad[2:, 1:-1]
    inner &= pad[1:-1, :-2]
    inner &= pad[1:-1, 2:]
    rim_rows, rim_cols = (a.astype(_COORD) for a in np.nonzero(core & ~inner))
    del inner
    # (neighbour offset that must be background, direction): the start vertex is the pixel's corner plus
    # _START_OFF[direction]; written straight into the output arrays (no per-side copies to concatenate)
    sides = [~pad[rim_rows + 1 + dr, rim_cols + 1 + dc] for dr, dc in ((-1, 0), (0, 1), (1, 0), (0, -1))]
    del pad
    n = sum(int(side.sum()) for side in sides)
    x0, y0, d = np.empty(n, _COORD), np.empty(n, _COORD), np.empty(n, np.int8)
    at = 0
    for direction, side in enumerate(sides):
        k = int(side.sum())
        ox, oy = _START_OFF[direction]
        x0[at:at + k] = rim_cols[side] + _COORD(ox)
        y0[at:at + k] = rim_rows[side] + _COORD(oy)
        d[at:at + k] = direction
        at += k
    return x0, y0, d


# Start vertex of each direction's edge relative to its pixel's top-left corner: top side east from (c, r),
# right side south from (c+1, r), bottom side west from (c+1, r+1), left side north from (c, r+1).
_START_OFF = ((0, 0), (1, 0), (1, 1), (0, 1))


def _pixel_of(x0: np.ndarray, y0: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of the foreground pixel on the right of each edge (the inverse of `_START_OFF`)."""
    off = np.array(_START_OFF, dtype=_COORD)[d]
    return y0 - off[:, 1], x0 - off[:, 0]


SEARCH_CHUNK = 1 << 18  # edges whose successors are looked up at a time (bounded temporaries)


def _successors(x0: np.ndarray, y0: np.ndarray, d: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Index of the edge that follows each edge in its ring: right turn, else straight, else left turn."""
    h, w = shape
    stride = w + 1  # vertices per grid row
    kt = np.int32 if (h + 1) * stride * 4 < 2**31 else np.int64  # (vertex, direction) keys
    keys = (y0.astype(kt) * stride + x0) * 4 + d
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    del keys
    it = _index_type(len(x0))
    order = order.astype(it)
    succ = np.full(len(x0), -1, dtype=it)
    for s0 in range(0, len(x0), SEARCH_CHUNK):
        dd = d[s0:s0 + SEARCH_CHUNK]
        end = (y0[s0:s0 + SEARCH_CHUNK] + _DY[dd]).astype(kt) * stride + (x0[s0:s0 + SEARCH_CHUNK] + _DX[dd])
        part = succ[s0:s0 + SEARCH_CHUNK]  # a view: written in place
        for turn in (1, 0, 3):  # right, straight, left
            todo = np.nonzero(part < 0)[0]
            if not len(todo):
                break
            want = end[todo] * 4 + (dd[todo] + turn) % 4
            pos = np.minimum(np.searchsorted(sorted_keys, want), len(sorted_keys) - 1)
            found = sorted_keys[pos] == want
            part[todo[found]] = order[pos[found]]
    if (succ < 0).any():  # cannot happen for a closed boundary; guards against a logic error
        raise RuntimeError("polygonisation: an open boundary chain; please report this as a bug")
    return succ


def _rank_rings(succ: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ring id and position of each edge along its ring (list ranking by pointer jumping).

    `succ` is a permutation made of disjoint cycles. Returns (ring [n], rank [n], both of `_index_type(n)`);
    ring ids are the smallest edge index in each cycle (the ring's head, rank 0).
    """
    n = len(succ)
    it = _index_type(n)
    # Ring id = min index in the cycle: propagate minima by pointer jumping.
    ring = np.arange(n, dtype=it)
    nxt = succ.copy()
    steps = 1
    while steps < n:
        np.minimum(ring, ring[nxt], out=ring)
        nxt = nxt[nxt]
        steps *= 2
    # Break each cycle before its head, then rank by distance to the tail.
    pred = np.empty(n, dtype=it)
    pred[succ] = np.arange(n, dtype=it)
    is_tail = np.zeros(n, dtype=bool)
    is_tail[pred[ring == np.arange(n, dtype=it)]] = True
    del pred
    nxt[:] = succ
    nxt[is_tail] = np.nonzero(is_tail)[0]
    dist = (~is_tail).astype(it)
    del is_tail
    steps = 1
    while steps < n:
        np.add(dist, dist[nxt], out=dist)
        nxt = nxt[nxt]
        steps *= 2
    del nxt
    # The head is the farthest from the tail (length - 1 steps): rank = its distance minus one's own.
    rank = dist[ring]
    np.subtract(rank, dist, out=rank)
    return ring, rank


OUTLINES = ("midpoints", "edges")


def _corners(d: np.ndarray, succ: np.ndarray, outline: str) -> np.ndarray:
    """Which edges give a ring vertex: "edges", those whose direction differs from their predecessor's;
    "midpoints", those next to a turn (either side); `outline` is checked by `polygonize`."""
    pred = np.empty_like(succ)
    pred[succ] = np.arange(len(succ), dtype=succ.dtype)
    keep: np.ndarray = d != d[pred]
    if outline == "midpoints":
        keep |= d != d[succ]
    return keep


def _vertex_xy(x0: np.ndarray, y0: np.ndarray, d: np.ndarray, outline: str) -> tuple[np.ndarray, np.ndarray]:
    """The ring vertex of each (kept) edge, in grid_xy (float64): its start ("edges") or its midpoint."""
    if outline == "edges":
        return x0.astype(np.float64), y0.astype(np.float64)
    return x0 + _DX[d] * 0.5, y0 + _DY[d] * 0.5


def _ring_regions(
    x0: np.ndarray, y0: np.ndarray, d: np.ndarray, ring: np.ndarray, labels: np.ndarray, n_regions: int,
    min_area_px: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per edge-indexed ring head: (ring_region, ring_hole, keep_region).

    ring_region[e] / ring_hole[e]: for the head edge e of each ring, the label of the region it bounds and
    1 for a hole (0 for a shell); keep_region[label]: whether that region's area is >= min_area_px.
    """
    n = len(ring)
    # Signed area per ring (shoelace over all edges), > 0 for shells (clockwise on screen, y down). For a unit
    # edge x*(y+dy) - (x+dx)*y = x*dy - dx*y, an integer (exact in float64).
    term = x0 * _DY[d] - _DX[d] * y0
    area2 = np.bincount(ring, weights=term, minlength=n)
    del term
    heads = np.nonzero(ring == np.arange(n, dtype=ring.dtype))[0]  # one edge per ring
    rows, cols = _pixel_of(x0[heads], y0[heads], d[heads])
    region = labels[rows, cols]  # label of the pixel each ring encloses
    is_shell = area2[heads] > 0
    shell_area = np.zeros(n_regions + 1)
    shell_area[region[is_shell]] = area2[heads][is_shell] / 2
    hole_area = np.bincount(region[~is_shell], weights=-area2[heads][~is_shell] / 2, minlength=n_regions + 1)
    keep_region = (shell_area - hole_area) >= max(min_area_px, 1e-9)
    ring_region = np.zeros(n, dtype=labels.dtype)
    ring_region[heads] = region
    ring_hole = np.zeros(n, dtype=np.int8)
    ring_hole[heads] = ~is_shell
    return ring_region, ring_hole, keep_region


def polygonize(fg: np.ndarray, *, min_area_px: float = 0.0, outline: str = "midpoints",
               labels: tuple[np.ndarray, int] | None = None) -> Any:
    """Polygons of the 4-connected regions of a bool [h, w] mask, in grid_xy (pixel corners, y down).

    outline "edges": rings follow the pixel sides exactly (area = pixel count). "midpoints": rings join
    the midpoints of consecutive pixel sides, which cuts each corner by 1/8 px² (convex corners lose it,
    concave ones gain it): pixel centres fall inside exactly as with "edges", diagonal staircases become
    straight lines that simplify to few vertices, and rings no longer touch at diagonal pinches.

    Returns a numpy object array with one valid shapely geometry per region whose area is at least
    `min_area_px` grid pixels: a Polygon (holes kept, exact pixel outlines, not simplified), or rarely a
    MultiPolygon where repairing a self-touching ring split it. Polygons come in the order of their regions'
    labels; `labels`, (label image, count), gives `fg`'s regions as `ndimage.label(fg)` would number them
    (saves labelling again where they are known).
    """
    import shapely
    from scipy import ndimage

    if outline not in OUTLINES:
        raise UsageError(f"outline {outline!r} is unknown; use one of {', '.join(OUTLINES)}")
    fg = np.asarray(fg, dtype=bool)
    if not fg.any():
        return np.empty(0, dtype=object)
    x0, y0, d = _boundary_edges(fg)
    succ = _successors(x0, y0, d, fg.shape)
    ring, rank = _rank_rings(succ)
    corner = _corners(d, succ, outline)
    del succ
    label_image, n_regions = ndimage.label(fg) if labels is None else labels
    ring_region, ring_hole, keep_region = _ring_regions(x0, y0, d, ring, label_image, n_regions, min_area_px)
    del label_image, labels
    # The corner vertices of kept regions, ordered by region, shell before holes, ring, position in ring;
    # the per-edge arrays are freed before the geometry objects are made.
    sel = corner & keep_region[ring_region[ring]]
    del corner
    vx, vy = _vertex_xy(x0[sel], y0[sel], d[sel], outline)
    del x0, y0, d
    e_ring, e_rank = ring[sel], rank[sel]
    del ring, rank, sel
    order = np.lexsort((e_rank, e_ring, ring_hole[e_ring], ring_region[e_ring]))
    del e_rank
    xy = np.column_stack([vx[order], vy[order]]).astype(np.float64)
    del vx, vy
    e_ring = e_ring[order]
    del order
    # Ring index (0..R-1) per vertex and polygon index per ring, for shapely's vectorised constructors.
    ring_starts = np.r_[True, e_ring[1:] != e_ring[:-1]]
    ring_idx = np.cumsum(ring_starts) - 1
    ring_ids = e_ring[ring_starts]
    rings = shapely.linearrings(xy, indices=ring_idx)
    del xy, ring_idx
    ring_reg = ring_region[ring_ids]
    poly_starts = np.r_[True, ring_reg[1:] != ring_reg[:-1]]
    polys = shapely.polygons(rings, indices=np.cumsum(poly_starts) - 1)
    del rings
    if outline == "midpoints":
        # Valid by construction: every ring vertex is the midpoint of its own unit edge, and at a vertex where
        # four boundary edges meet (a diagonal pinch) both rings turn, cutting opposite corners, so no two ring
        # segments touch. (Checking would cost GEOS' validity graph: +100 MB on one region with 1M edges; to_l0
        # checks every polygon after simplification anyway.)
        return polys
    # With outline "edges", a region whose pixels touch diagonally around a background pocket has a shell that
    # touches itself at a vertex; OGC wants that as a shell plus a hole touching it, which make_valid produces.
    bad = ~shapely.is_valid(polys)
    for i in np.nonzero(bad)[0]:
        parts = _polygonal(shapely.make_valid(polys[i]))
        polys[i] = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
    return polys


def _polygonal(geom: Any) -> list[Any]:
    """The polygons in a (possibly mixed) geometry, e.g. what make_valid returns."""
    import shapely

    t = shapely.get_type_id(geom)
    if t == 3:  # Polygon
        return [] if geom.is_empty else [geom]
    if t in (6, 7):  # MultiPolygon, GeometryCollection
        out: list[Any] = []
        for g in shapely.get_parts(geom):
            out.extend(_polygonal(g))
        return out
    return []


BIG_POLYGON_HOLES = 200  # above this many holes a polygon is simplified without topology preservation


def _simplify(polys: Any, tolerance_px: float) -> Any:
    """Douglas-Peucker within `tolerance_px`, keeping topology (holes stay holes) for ordinary polygons. GEOS'
    topology-preserving simplifier is super-linear in the number of holes (over 11 minutes on one region of
    an 18k x 18k noisy mask), so a polygon with more than BIG_POLYGON_HOLES holes is simplified ring by ring
    instead (7 s there); the validity check in `to_l0` repairs the rare ring that folds."""
    import shapely

    polys = np.asarray(polys, dtype=object)
    holes = shapely.get_num_interior_rings(polys)  # -1 for a MultiPolygon: those keep topology
    big = holes > BIG_POLYGON_HOLES
    out = np.empty_like(polys)
    out[~big] = shapely.simplify(polys[~big], tolerance_px, preserve_topology=True)
    if big.any():
        out[big] = shapely.simplify(polys[big], tolerance_px, preserve_topology=False)
    return out


def to_l0(polys: Any, sx: float, sy: float, *, tolerance_px: float = SIMPLIFY_PX,
          offset: tuple[float, float] = (0.0, 0.0), grid_origin: tuple[int, int] = (0, 0)) -> list[Any]:
    """Simplify grid_xy polygons within `tolerance_px`, shift by `grid_origin` (grid px: where a window of the
    grid starts), scale to l0_xy, subtract `offset` (l0 px: the output frame's origin in level 0), round, and
    make each valid.

    Returns one shapely Polygon or MultiPolygon per input polygon (empty results are dropped).
    """
    import shapely

    if len(polys) == 0:
        return []
    if tolerance_px > 0:
        polys = _simplify(polys, tolerance_px)
    scale, origin = np.array([sx, sy]), np.array(offset, dtype=np.float64)
    shift = np.array(grid_origin, dtype=np.float64)
    polys = shapely.transform(polys, lambda c: np.round((c + shift) * scale - origin, DECIMALS))
    valid = shapely.is_valid(polys)
    out = []
    for g, ok in zip(polys, valid, strict=True):
        if ok:
            if not g.is_empty:
                out.append(g)
            continue
        parts = _polygonal(shapely.make_valid(g))
        if len(parts) == 1:
            out.append(parts[0])
        elif parts:
            out.append(shapely.MultiPolygon(parts))
    return out


def feature(geom: Any, cls: ClassInfo) -> dict[str, Any]:
    """A QuPath-style GeoJSON annotation Feature for a Polygon/MultiPolygon in l0_xy."""
    import shapely

    return {
        "type": "Feature",
        "geometry": json.loads(shapely.to_geojson(geom)),
        "properties": {
            "objectType": "annotation",
            "classification": {"name": cls.name, "color": [int(v) for v in cls.color]},
            "isLocked": False,
        },
    }


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


def iter_features(
    grid: np.ndarray, classes: Sequence[ClassInfo], sx: float, sy: float, *, min_area_px: float = 0.0,
    offset: tuple[float, float] = (0.0, 0.0), batch_px: int = BATCH_PIXELS,
) -> Iterator[tuple[int, Any]]:
    """(class index, geometry in l0_xy minus `offset`) for every region of every class >= 1 of a uint8 [h, w]
    class grid. Regions are polygonised in batches of `region_batches` (same output as all at once); the
    grid's label image is dropped before the first batch (`Regions`), so a batch costs its window alone."""
    for c in range(1, len(classes)):
        regions = Regions.of(grid, c)  # labelled band by band: no full-grid mask or label image
        for lo, hi, (rows, cols) in region_batches(regions.boxes, batch_px):
            labels = regions.batch_labels(grid[rows, cols] == c, lo, hi, (rows.start, cols.start))
            # no name holds polygonize's result: to_l0 drops each stage's geometries as it makes the next
            for g in to_l0(polygonize(labels > 0, min_area_px=min_area_px, labels=(labels, hi - lo + 1)), sx, sy,
                           offset=offset, grid_origin=(cols.start, rows.start)):
                yield c, g
            del labels
        del regions


def write_geojson(
    result: MaskResult,
    slide: SlideInfo,
    classes: Sequence[ClassInfo],
    path: Path,
    *,
    geojson_mpp: float | None = None,
    max_pixels: int | None = MAX_PIXELS,
    min_area_px: float = 0.0,
    frame: str = "qupath",
) -> dict[str, Any]:
    """Write `mask.geojson` atomically; return how it was made (grid size and mpp, features per class, frame).

    The grid is the mask at `geojson_mpp` (um/px; None = the mask's own), capped at `max_pixels`.
    Coordinates are in `frame` ("qupath": level 0 minus the slide's bounds offset; "level0"), see
    `frame_offset`.
    Features are streamed to the file one per line, so the file never sits in memory whole.
    """
    t0 = time.perf_counter()
    gw, gh = grid_size_for(result, geojson_mpp, max_pixels)
    grid, method = class_grid(result, gw, gh, num_classes=len(classes))  # the only copy of the grid in memory
    sx, sy = slide.width / gw, slide.height / gh  # l0 px per grid px
    offset, offset_source = frame_offset(slide, frame)
    counts = _stream_features(Path(path), iter_features(grid, classes, sx, sy, min_area_px=min_area_px,
                                                        offset=offset), classes)
    seconds = time.perf_counter() - t0
    grid_mpp = result.mask_width * result.mpp / gw
    logger.info(
        "wrote %s: %d features from a %dx%d grid at %.3g um/px in %.2f s",
        path, sum(counts.values()), gw, gh, grid_mpp, seconds,
    )
    return {
        "file": Path(path).name,
        "grid_width": gw,
        "grid_height": gh,
        "grid_mpp_x": grid_mpp,
        "grid_mpp_y": result.mask_height * result.mpp / gh,
        "l0_per_grid_px_x": sx,
        "l0_per_grid_px_y": sy,
        "downsampling": method,
        "simplify_tolerance_px": SIMPLIFY_PX,
        "min_area_px": min_area_px,
        "connectivity": 4,
        "frame": frame,
        "frame_offset_l0": list(offset),
        "frame_offset_source": offset_source,
        "features": counts,
        "seconds": seconds,
    }


def _stream_features(path: Path, features: Iterator[tuple[int, Any]], classes: Sequence[ClassInfo]) -> dict[str, int]:
    """Write (class index, geometry) pairs to `path` atomically as a FeatureCollection, one feature per line;
    returns the number of features per class name."""
    import shapely

    counts = {c.name: 0 for c in classes[1:]}
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write('{"type": "FeatureCollection", "features": [\n')
        first = True
        for c, geom in features:
            props = feature(shapely.Polygon(), classes[c])["properties"]
            text = '{"type": "Feature", "geometry": ' + shapely.to_geojson(geom) + ', "properties": '
            text += json.dumps(props) + "}"
            f.write(("" if first else ",\n") + text)
            first = False
            counts[classes[c].name] += 1
        f.write("\n]}\n")
    return counts


def frame_offset(slide: SlideInfo, frame: str) -> tuple[tuple[float, float], str]:
    """The origin of `frame` in level-0 px, (x, y), and where it came from.

    "qupath": (`openslide.bounds-x`, `openslide.bounds-y`) when the slide has them (QuPath's OpenSlide server
    crops to the bounds), else (0, 0); "level0": (0, 0).
    """
    if frame not in GEOJSON_FRAMES:
        raise UsageError(f"geojson frame {frame!r} is not one of {', '.join(GEOJSON_FRAMES)}", field="geojson_frame")
    props = slide.properties or {}
    if frame == "level0":
        return (0.0, 0.0), "level 0 asked for"
    if "openslide.bounds-x" not in props and "openslide.bounds-y" not in props:
        return (0.0, 0.0), "the slide has no openslide.bounds-x/y: QuPath's frame is level 0"
    try:
        bx, by = float(props.get("openslide.bounds-x", 0)), float(props.get("openslide.bounds-y", 0))
    except ValueError:
        raise UsageError(f"{slide.path}: unreadable openslide.bounds-x/y ({props.get('openslide.bounds-x')!r}, "
                         f"{props.get('openslide.bounds-y')!r}); pass --geojson-frame level0") from None
    return (bx, by), "openslide.bounds-x/y"


@dataclass(frozen=True)
class GeoJsonWriter:
    """Format "geojson": `mask.geojson`, one QuPath annotation per connected region of each class >= 1."""

    name: str = "geojson"
    file_name: str = "mask.geojson"

    def write(self, context: OutputContext) -> OutputRecord:
        path = context.out_dir / self.file_name
        opts = context.options
        info = write_geojson(context.result, context.slide, context.classes, path,
                             geojson_mpp=opts.geojson_mpp, max_pixels=opts.geojson_max_pixels,
                             frame=opts.geojson_frame)
        return OutputRecord(path, info)

    def is_current(self, report: Mapping[str, Any], options: OutputOptions) -> bool:
        """True when the recorded mask.geojson is in the frame asked for (files from before frames existed were
        in level 0). The grid options are not checked: mask.geojson is kept as it was made."""
        recorded = report.get("outputs", {}).get(self.name, {}).get("frame", "level0")
        return bool(recorded == options.geojson_frame)
