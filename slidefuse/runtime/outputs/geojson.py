"""`mask.geojson`: one QuPath annotation per connected region of each non-background class.

Each class's regions come from `regions.Regions` (labelled band by band, in batches of bounded windows) and are
polygonised exactly on the pixel grid, then simplified and scaled to level 0 (`polygons`: 4-connected regions,
midpoint outlines, half a grid pixel of tolerance, valid geometries). Features are streamed to the file one per
line, so the file never sits in memory whole.

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

Measurements: every feature's `properties.measurements` is a map of name to number, the form QuPath's GeoJSON
import reads (`MeasurementListTypeAdapter` in QuPath's `qupath.lib.io.QuPathTypeAdapters`): "Area µm^2", the
region's grid pixels times a grid pixel's area (at the mask's resolution, the same count as report.json's
areas; the simplified outline differs from it by up to half a pixel along the edge), "Perimeter µm", the length
of the polygon as written (every ring; level-0 pixel size of the slide), and "Mean probability", the mean
probability of the feature's class over its grid pixels (from the stitched probabilities, see
`probs.ProbabilityGrid`; left out when the stitcher wrote none).
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
from slidefuse.runtime.outputs.polygons import SIMPLIFY_PX, polygonize_regions, to_l0_indexed
from slidefuse.runtime.outputs.probs import ProbabilityGrid, region_means
from slidefuse.runtime.outputs.raster import class_grid, grid_size_for
from slidefuse.runtime.outputs.regions import BATCH_PIXELS, Regions, region_batches
from slidefuse.runtime.types import MaskResult, SlideInfo

logger = logging.getLogger(__name__)

MAX_PIXELS = GEOJSON_MAX_PIXELS  # default cap on the polygonised grid (67 Mpx, e.g. 8192 x 8192)
AREA, PERIMETER, MEAN_PROBABILITY = "Area µm^2", "Perimeter µm", "Mean probability"  # measurement names


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


def iter_features(
    grid: np.ndarray, classes: Sequence[ClassInfo], sx: float, sy: float, *, min_area_px: float = 0.0,
    offset: tuple[float, float] = (0.0, 0.0), batch_px: int = BATCH_PIXELS,
) -> Iterator[tuple[int, Any]]:
    """(class index, geometry in l0_xy minus `offset`) for every region of every class >= 1 of a uint8 [h, w]
    class grid. Regions are polygonised in batches of `region_batches` (same output as all at once); the
    grid's label image is dropped before the first batch (`Regions`), so a batch costs its window alone."""
    for c, g, _, _ in iter_regions(grid, classes, sx, sy, min_area_px=min_area_px, offset=offset,
                                   batch_px=batch_px):
        yield c, g


def iter_regions(
    grid: np.ndarray, classes: Sequence[ClassInfo], sx: float, sy: float, *, min_area_px: float = 0.0,
    offset: tuple[float, float] = (0.0, 0.0), batch_px: int = BATCH_PIXELS, probs: ProbabilityGrid | None = None,
) -> Iterator[tuple[int, Any, int, float | None]]:
    """`iter_features`' (class index, geometry), each with the region's number of grid pixels and the mean
    probability of its class over them (from `probs`, a probability in [0, 1]; None without `probs`)."""
    for c in range(1, len(classes)):
        regions = Regions.of(grid, c)  # labelled band by band: no full-grid mask or label image
        for lo, hi, (rows, cols) in region_batches(regions.boxes, batch_px):
            labels = regions.batch_labels(grid[rows, cols] == c, lo, hi, (rows.start, cols.start))
            n = hi - lo + 1
            pixels = np.bincount(labels.ravel(), minlength=n + 1)
            means = region_means(labels, n, probs.window(c, rows, cols)) if probs is not None else None
            polys, poly_labels = polygonize_regions(labels > 0, min_area_px=min_area_px, labels=(labels, n))
            held = [polys]  # to_l0 drops each stage's geometries as it makes the next: no name keeps these
            del polys, labels
            for i, g in to_l0_indexed(held.pop(), sx, sy, offset=offset, grid_origin=(cols.start, rows.start)):
                label = poly_labels[i]
                yield c, g, int(pixels[label]), (float(means[label]) if means is not None else None)
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
    probs = ProbabilityGrid(result, len(classes), gw, gh) if result.probs_path is not None else None
    features = iter_regions(grid, classes, sx, sy, min_area_px=min_area_px, offset=offset, probs=probs)
    counts = _stream_features(Path(path), features, classes, (sx * slide.mpp, sy * slide.mpp), slide.mpp)
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
        "measurements": [AREA, PERIMETER] + ([MEAN_PROBABILITY] if probs is not None else []),
        "seconds": seconds,
    }


def measurements(geom: Any, pixels: int, grid_um: tuple[float, float], l0_mpp: float,
                 mean_probability: float | None) -> dict[str, float]:
    """QuPath measurements of a region of ``pixels`` grid pixels (each ``grid_um`` µm wide and high) outlined by
    ``geom`` in level-0 px (``l0_mpp`` µm per level-0 px): area in µm², perimeter in µm (every ring's length),
    and the mean probability of its class when known."""
    out = {AREA: round(pixels * grid_um[0] * grid_um[1], 3), PERIMETER: round(float(geom.length) * l0_mpp, 3)}
    if mean_probability is not None:
        out[MEAN_PROBABILITY] = round(mean_probability, 4)
    return out


def _stream_features(path: Path, features: Iterator[tuple[int, Any, int, float | None]],
                     classes: Sequence[ClassInfo], grid_um: tuple[float, float], l0_mpp: float) -> dict[str, int]:
    """Write (class index, geometry, grid pixels, mean probability) to `path` atomically as a FeatureCollection,
    one feature per line, with its measurements (`measurements`); returns the number of features per class
    name."""
    import shapely

    counts = {c.name: 0 for c in classes[1:]}
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write('{"type": "FeatureCollection", "features": [\n')
        first = True
        for c, geom, pixels, mean in features:
            props = feature(shapely.Polygon(), classes[c])["properties"]
            props["measurements"] = measurements(geom, pixels, grid_um, l0_mpp, mean)
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
                         f"{props.get('openslide.bounds-y')!r}); pass geojson_frame=level0",
                         field="geojson_frame") from None
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
