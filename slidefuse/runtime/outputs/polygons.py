"""Polygonisation of a bool mask on the pixel grid: boundary edges -> rings -> polygons, then simplified and scaled.

1. The boundary between a mask's pixels and the rest is a set of unit edges along pixel sides (grid vertices are
   pixel corners, `grid_xy`). Each edge is directed with the mask on its right (on screen, y down), so every
   region's outer ring runs clockwise on screen and every hole ring counter-clockwise.
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
   with `make_valid` where simplification or rounding broke one (`to_l0`).

Memory: about 10 bytes per mask pixel plus about 80 bytes per boundary edge (`regions.region_batches` keeps the
masks it is given small).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from slidefuse.errors import UsageError

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
        raise UsageError(f"polygonisation: a {w} x {h} grid is too large; lower geojson_max_pixels")
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
    """Polygons of the 4-connected regions of a bool [h, w] mask, in grid_xy (pixel corners, y down): the
    polygons of `polygonize_regions`, without their labels."""
    return polygonize_regions(fg, min_area_px=min_area_px, outline=outline, labels=labels)[0]


def polygonize_regions(fg: np.ndarray, *, min_area_px: float = 0.0, outline: str = "midpoints",
                       labels: tuple[np.ndarray, int] | None = None) -> tuple[Any, np.ndarray]:
    """Polygons of the 4-connected regions of a bool [h, w] mask, in grid_xy (pixel corners, y down), and the
    label of the region each polygon outlines (int [n], ``ndimage.label(fg)``'s numbering, or `labels`').

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
        return np.empty(0, dtype=object), np.empty(0, dtype=np.int64)
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
    poly_labels = ring_reg[poly_starts].astype(np.int64)
    del rings
    if outline == "midpoints":
        # Valid by construction: every ring vertex is the midpoint of its own unit edge, and at a vertex where
        # four boundary edges meet (a diagonal pinch) both rings turn, cutting opposite corners, so no two ring
        # segments touch. (Checking would cost GEOS' validity graph: +100 MB on one region with 1M edges; to_l0
        # checks every polygon after simplification anyway.)
        return polys, poly_labels
    # With outline "edges", a region whose pixels touch diagonally around a background pocket has a shell that
    # touches itself at a vertex; OGC wants that as a shell plus a hole touching it, which make_valid produces.
    bad = ~shapely.is_valid(polys)
    for i in np.nonzero(bad)[0]:
        parts = _polygonal(shapely.make_valid(polys[i]))
        polys[i] = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
    return polys, poly_labels


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
    return [g for _, g in to_l0_indexed(polys, sx, sy, tolerance_px=tolerance_px, offset=offset,
                                        grid_origin=grid_origin)]


def to_l0_indexed(polys: Any, sx: float, sy: float, *, tolerance_px: float = SIMPLIFY_PX,
                  offset: tuple[float, float] = (0.0, 0.0), grid_origin: tuple[int, int] = (0, 0)
                  ) -> list[tuple[int, Any]]:
    """`to_l0`, each result with the index of the input polygon it came from (empty results are dropped)."""
    import shapely

    if len(polys) == 0:
        return []
    if tolerance_px > 0:
        polys = _simplify(polys, tolerance_px)
    scale, origin = np.array([sx, sy]), np.array(offset, dtype=np.float64)
    shift = np.array(grid_origin, dtype=np.float64)
    polys = shapely.transform(polys, lambda c: np.round((c + shift) * scale - origin, DECIMALS))
    valid = shapely.is_valid(polys)
    out: list[tuple[int, Any]] = []
    for i, (g, ok) in enumerate(zip(polys, valid, strict=True)):
        if ok:
            if not g.is_empty:
                out.append((i, g))
            continue
        parts = _polygonal(shapely.make_valid(g))
        if len(parts) == 1:
            out.append((i, parts[0]))
        elif parts:
            out.append((i, shapely.MultiPolygon(parts)))
    return out
