"""Regions of interest: reading a QuPath GeoJSON export or a mask image into named polygons.

Two inputs, told apart by their first bytes (JSON starts with ``{`` or ``[``):

- **GeoJSON** (QuPath: File > Export objects as GeoJSON): a FeatureCollection, a list of Features or one
  Feature. Each feature's geometry must be a Polygon or a MultiPolygon (holes are honoured); coordinates are
  level-0 pixels in the frame mask.geojson uses (``geojson_frame``: QuPath's, i.e. level 0 minus the slide's
  ``openslide.bounds-x/y`` where it has them). A region's name is ``properties.name``, else
  ``properties.classification.name``, else the feature's ``id``, else ``region-<n>`` (n counts from 1). An
  invalid polygon (a self-intersection, as a brush stroke can make) is repaired with shapely's ``make_valid``
  and a warning names it.
- **A mask image** (any single- or multi-band image libvips reads: TIFF, PNG, ...): its first band, nonzero =
  inside, is one region named after the file. Its pixel (0, 0) is the slide's level-0 pixel (0, 0) (masks
  are not shifted by the QuPath frame). Its pixel size comes from its resolution tags when they hold one
  (libvips' 1 px/mm and whole-number dpi values are placeholders, not pixel sizes); without one, a mask with
  the slide's aspect ratio (within one mask pixel) covers the whole slide. Tags that give another extent than
  the slide's while the shape matches the slide's are ambiguous and refused, as is a mask with neither.

Every refusal is one `RoiError` line naming the file (and the feature: index from 0, and name). Nothing is
evaluated or unpickled: JSON is parsed with `json`, images are decoded by libvips.

The regions are placed on a slide with `place` (level-0 pixels, clipped to the slide; a region entirely
outside is refused); `roi_raster` rasterises them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from slidefuse.errors import SlidefuseError

log = logging.getLogger(__name__)

MAX_ROI_BYTES = 512 << 20  # a regions file larger than this is refused (a GeoJSON of that size is not annotations)
MAX_MASK_PIXELS = 1 << 26  # pixels of a mask image (67 Mpx, e.g. 8192 x 8192): save a coarser mask beyond it
POLYGONAL = ("Polygon", "MultiPolygon")


class RoiError(SlidefuseError, ValueError):
    """A regions file that cannot be used (one line naming the file, the feature and the fix)."""


@dataclass(frozen=True)
class Region:
    """One region of interest."""

    index: int  # its feature's position in the file, from 0 (a mask image: 0)
    name: str  # properties.name, classification name, feature id, or region-<index + 1>
    geometry: Any  # valid shapely Polygon or MultiPolygon: in the file's frame (`RoiFile`), or level 0 (`place`)
    feature_id: str | None = None  # the feature's GeoJSON "id" (QuPath writes a UUID), when it has one


@dataclass(frozen=True)
class RoiFile:
    """A regions file as read, before it is placed on a slide."""

    path: Path
    kind: Literal["geojson", "mask"]
    regions: tuple[Region, ...]  # GeoJSON: in the file's pixels (geojson frame); mask: in mask pixels
    digest: str  # sha256 of the file's bytes (part of a slide's skip key)
    mask_shape: tuple[int, int] | None = None  # a mask image's (height, width) in px
    mask_mpp: tuple[float, float] | None = None  # a mask image's (x, y) um/px from its resolution tags, if any


def file_digest(path: Path) -> str:
    """sha256 of a regions file's bytes; RoiError when it cannot be read."""
    return hashlib.sha256(_read_bytes(Path(path))).hexdigest()


def _read_bytes(path: Path) -> bytes:
    try:
        if not path.is_file():
            raise RoiError(f"regions file {path}: no such file; pass a QuPath GeoJSON export or a mask image")
        size = path.stat().st_size
        if size > MAX_ROI_BYTES:
            raise RoiError(f"regions file {path}: {size:,} bytes, over the limit of {MAX_ROI_BYTES:,}; export only "
                           "the annotations of the regions (not detections)")
        return path.read_bytes()
    except OSError as exc:
        raise RoiError(f"regions file {path}: cannot be read ({exc.strerror}); check its permissions") from None


def read_roi(path: Path) -> RoiFile:
    """Read a GeoJSON export or a mask image (see the module docstring); RoiError for anything unusable."""
    path = Path(path)
    data = _read_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    head = data.lstrip()[:1]
    if not head:
        raise RoiError(f"regions file {path}: empty file; export the annotations from QuPath (File > Export "
                       "objects as GeoJSON) or pass a mask image")
    if head in (b"{", b"["):
        return RoiFile(path, "geojson", read_geojson(path, data), digest)
    return _read_mask(path, digest)


# ------------------------------------------------------------------------------------------------- GeoJSON
def read_geojson(path: Path, data: bytes) -> tuple[Region, ...]:
    """The regions of a GeoJSON text (`data`, the bytes of `path`), in the file's coordinates."""
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno}: {exc.msg})" if isinstance(exc, json.JSONDecodeError) else ""
        raise RoiError(f"regions file {path}: not valid JSON{where}; export it again from QuPath (File > Export "
                       "objects as GeoJSON)") from None
    features = _features(path, doc)
    if not features:
        raise RoiError(f"regions file {path}: no features; draw the regions in QuPath and export them (File > "
                       "Export objects as GeoJSON)")
    return tuple(_region(path, n, f) for n, f in enumerate(features))


def _features(path: Path, doc: Any) -> list[Any]:
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        features = doc.get("features")
        if not isinstance(features, list):
            raise RoiError(f"regions file {path}: a FeatureCollection without a 'features' list; export it again")
        return features
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        return [doc]
    kind = doc.get("type") if isinstance(doc, dict) else type(doc).__name__
    raise RoiError(f"regions file {path}: a {kind!r}, not a FeatureCollection, a list of Features or a Feature; "
                   "export the annotations from QuPath (File > Export objects as GeoJSON)")


def region_name(feature: dict[str, Any], index: int) -> str:
    """properties.name, else properties.classification.name, else the feature's id, else region-<index + 1>."""
    props = feature.get("properties")
    props = props if isinstance(props, dict) else {}
    classification = props.get("classification")
    for value in (props.get("name"), classification.get("name") if isinstance(classification, dict) else None,
                  feature.get("id")):
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            return " ".join(str(value).split())
    return f"region-{index + 1}"


def _region(path: Path, index: int, feature: Any) -> Region:
    import shapely

    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise RoiError(f"regions file {path}: item {index} is not a GeoJSON Feature; export the annotations "
                       "from QuPath (File > Export objects as GeoJSON)")
    name = region_name(feature, index)
    what = f"regions file {path}: feature {index} ({name!r})"
    geometry = feature.get("geometry")
    kind = geometry.get("type") if isinstance(geometry, dict) else None
    if kind not in POLYGONAL:
        raise RoiError(f"{what} is a {kind or 'feature without a geometry'}, not a Polygon or MultiPolygon; draw "
                       "regions as areas (rectangle, ellipse, polygon, brush) or remove it")
    try:
        geom = shapely.from_geojson(json.dumps(geometry))
    except (shapely.errors.GEOSException, ValueError, TypeError) as exc:
        raise RoiError(f"{what}: unreadable coordinates ({' '.join(str(exc).split())}); export it again") from None
    coords = shapely.get_coordinates(geom)
    if geom.is_empty or not np.isfinite(coords).all():
        raise RoiError(f"{what}: {'no coordinates' if geom.is_empty else 'coordinates that are not finite'}; "
                       "redraw or remove it")
    fid = feature.get("id")
    return Region(index, name, _valid(geom, what), str(fid) if isinstance(fid, str | int) and fid != "" else None)


def _valid(geom: Any, what: str) -> Any:
    """`geom` when valid; else shapely's make_valid repair (its polygonal part), with a warning naming it."""
    import shapely

    if geom.is_valid:
        return geom
    reason = shapely.is_valid_reason(geom)
    parts = [g for g in shapely.get_parts(shapely.make_valid(geom)) if shapely.get_type_id(g) in (3, 6)]
    repaired = shapely.union_all(parts) if parts else None
    if repaired is None or repaired.is_empty or repaired.area <= 0:
        raise RoiError(f"{what}: an invalid polygon ({reason}) with no area once repaired; redraw it")
    log.warning("%s: invalid polygon (%s), repaired with shapely's make_valid (area %.0f px²)", what, reason,
                repaired.area)
    return repaired


# ---------------------------------------------------------------------------------------------- mask image
def _read_mask(path: Path, digest: str) -> RoiFile:
    import pyvips
    import shapely

    from slidefuse.runtime.outputs.polygons import polygonize

    try:
        image = pyvips.Image.new_from_file(str(path), access="sequential")
    except pyvips.Error as exc:
        first = (str(exc).strip().splitlines() or ["unknown format"])[0]
        raise RoiError(f"regions file {path}: neither GeoJSON nor an image libvips reads ({first}); pass a QuPath "
                       "GeoJSON export or a mask image (TIFF, PNG)") from None
    if image.width * image.height > MAX_MASK_PIXELS:
        raise RoiError(f"regions file {path}: a {image.width} x {image.height} mask, over {MAX_MASK_PIXELS:,} "
                       "pixels; save it at a coarser pixel size")
    try:
        inside = image.extract_band(0).numpy() != 0
    except pyvips.Error as exc:
        raise RoiError(f"regions file {path}: cannot be decoded ({' '.join(str(exc).split())})") from None
    if not inside.any():
        raise RoiError(f"regions file {path}: the mask has no nonzero pixel, so no region; nonzero pixels mark "
                       "the regions")
    geom = shapely.union_all(polygonize(inside, outline="edges"))  # exact pixel squares, in mask px
    mpp = _mask_mpp(image)
    region = Region(0, path.stem or path.name, geom if geom.is_valid else _valid(geom, f"regions file {path}"))
    return RoiFile(path, "mask", (region,), digest, (image.height, image.width), mpp)


def _mask_mpp(image: Any) -> tuple[float, float] | None:
    """(x, y) um/px from libvips' xres/yres (px/mm), or None for libvips' 1 px/mm default and print dpi."""
    values = []
    for res in (float(image.xres), float(image.yres)):
        dpi = res * 25.4
        if not math.isfinite(res) or res <= 0 or res == 1.0 or (dpi <= 1200.5 and abs(dpi - round(dpi)) < 0.01):
            return None
        values.append(1000.0 / res)
    return values[0], values[1]


# ------------------------------------------------------------------------------------------ on the slide
def place(roi: RoiFile, l0_size: tuple[int, int], l0_mpp: float, offset_l0: tuple[float, float]) -> tuple[Region, ...]:
    """The regions in the slide's level-0 pixels, clipped to the slide (``l0_size`` = (width, height)).

    GeoJSON: file coordinates plus ``offset_l0`` (the geojson frame's origin, `outputs.geojson.frame_offset`).
    Mask: mask pixels times level-0 px per mask px (`mask_scale`). A region entirely outside is refused."""
    import shapely

    if roi.kind == "mask":
        sx, sy = mask_scale(roi, l0_size, l0_mpp)
        ox, oy = 0.0, 0.0
    else:
        (sx, sy), (ox, oy) = (1.0, 1.0), offset_l0
    box = shapely.box(0, 0, l0_size[0], l0_size[1])
    out = []
    for r in roi.regions:
        geom = shapely.transform(r.geometry, lambda xy, sx=sx, sy=sy: xy * (sx, sy) + (ox, oy))
        clipped = shapely.intersection(geom, box)
        parts = [g for g in shapely.get_parts(clipped) if shapely.get_type_id(g) in (3, 6) and g.area > 0]
        if not parts:
            lo_x, lo_y, hi_x, hi_y = (round(v) for v in geom.bounds)
            raise RoiError(f"regions file {roi.path}: feature {r.index} ({r.name!r}) lies entirely outside the slide "
                           f"(its level-0 bounds x {lo_x}..{hi_x}, y {lo_y}..{hi_y}; the slide is {l0_size[0]} x "
                           f"{l0_size[1]} px); export the regions drawn on this slide")
        out.append(Region(r.index, r.name, shapely.union_all(parts), r.feature_id))
    return tuple(out)


def mask_scale(roi: RoiFile, l0_size: tuple[int, int], l0_mpp: float) -> tuple[float, float]:
    """Level-0 px per mask px, (x, y): from the mask's resolution tags, or from the slide's size when the mask
    has the slide's aspect ratio and no tags; RoiError when neither, or when the two disagree."""
    if roi.mask_shape is None:
        raise RoiError(f"regions file {roi.path}: not a mask image")
    mh, mw = roi.mask_shape
    sw, sh = l0_size
    same_shape = abs(mw - sw * mh / sh) <= 1.0 or abs(mh - sh * mw / sw) <= 1.0
    whole = (sw / mw, sh / mh)
    if roi.mask_mpp is not None:
        tagged = (roi.mask_mpp[0] / l0_mpp, roi.mask_mpp[1] / l0_mpp)
        if same_shape and any(abs(t / w - 1) > 0.02 for t, w in zip(tagged, whole, strict=True)):
            raise RoiError(f"regions file {roi.path}: ambiguous mask: its resolution says {roi.mask_mpp[0]:g} um/px "
                           f"({mw * roi.mask_mpp[0] / 1000:.2f} mm wide) but its {mw} x {mh} px shape matches the "
                           f"whole slide ({sw * l0_mpp / 1000:.2f} mm wide); fix or remove its resolution tags")
        return tagged
    if not same_shape:
        raise RoiError(f"regions file {roi.path}: the {mw} x {mh} px mask has no pixel size in its resolution tags "
                       f"and not the slide's aspect ratio ({sw} x {sh} px); save it with its resolution (um/px) or "
                       "at the slide's aspect ratio")
    return whole
