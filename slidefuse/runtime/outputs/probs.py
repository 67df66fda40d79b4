"""`probs.ome.tif`: the blended class probabilities as a pyramidal, tiled OME-TIFF (and `probs.zarr`, see `zarr`).

Layout: one uint8 plane per class (``round(p * 255)``, the stitcher's values, see `runtime.stitch_probs`), in
class order, 256 x 256 tiles, deflate with the horizontal predictor; each plane is a main IFD whose pyramid
(each level half the previous, the 2x2 mean, down to one tile) is in its SubIFDs, as OME-TIFF 6 lays pyramids
out (Bio-Formats / QuPath, tifffile and napari read it). The OME-XML in the first IFD names each channel after
its class and gives the physical pixel size of the full-resolution level (µm); every level carries its own
pixel size in its resolution tags (pixels per centimetre). Pixels no tile covered, or that a keep mask drops,
are 0 in every channel.

Bounded memory: libvips reads the stitcher's raw interleaved file (memory-mapped, window by window), splits it
into planes stacked one above the other (``page-height``) and writes the pyramid tile row by tile row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

import numpy as np

from slidefuse.atomic import atomic_path
from slidefuse.runtime.bundle import ClassInfo
from slidefuse.runtime.outputs.base import OutputContext, OutputOptions, OutputRecord
from slidefuse.runtime.outputs.raster import OutputError
from slidefuse.runtime.outputs.tiff_tags import set_level_resolutions
from slidefuse.runtime.stitch_probs import PROBS_SCALE

if TYPE_CHECKING:
    import pyvips

    from slidefuse.runtime.types import MaskResult

logger = logging.getLogger(__name__)

TILE = 256  # TIFF tile side in px (as mask.tif's)
COMPRESSION = "deflate"
PROBS_FORMAT = "probs"  # --formats probs: probs.ome.tif
PROBS_ZARR_FORMAT = "probs-zarr"  # probs.zarr: chosen with probs and zarr together (or by name)
NEEDS_PROBABILITIES = frozenset({PROBS_FORMAT, PROBS_ZARR_FORMAT, "geojson"})  # geojson: mean probabilities
BIGTIFF_BYTES = 1 << 31  # above this many uncompressed bytes, write BigTIFF


def needs_probabilities(options: OutputOptions) -> bool:
    """Whether the stitcher must write the probabilities for the outputs `options` ask for."""
    return bool(options.formats & NEEDS_PROBABILITIES)


def open_probs(result: MaskResult, num_classes: int) -> pyvips.Image:
    """The stitcher's raw probabilities as a lazy C-band uchar pyvips image, mask_width x mask_height, band
    ``k`` = round(p_k * 255). Raises OutputError when they were not written or the file has the wrong size."""
    import pyvips

    raw = result.probs_path
    if raw is None:
        raise OutputError("the stitcher did not write class probabilities for this slide; ask for them with "
                          "the 'probs' output format")
    expected = result.mask_width * result.mask_height * num_classes
    size = raw.stat().st_size if raw.is_file() else None
    if size != expected:
        raise OutputError(f"{raw}: {size if size is not None else 'missing'}, expected {result.mask_width}x"
                          f"{result.mask_height}x{num_classes} = {expected} bytes of uint8 probabilities; the "
                          "stitching did not finish")
    return pyvips.Image.rawload(str(raw), result.mask_width, result.mask_height, num_classes, format="uchar",
                                interpretation="multiband")


def ome_xml(name: str, width: int, height: int, mpp_x: float, mpp_y: float,
            classes: tuple[ClassInfo, ...]) -> str:
    """The OME-XML of probs.ome.tif: one uint8 image, C = the classes (named), planes in IFD order 0..C-1."""
    channels = "".join(
        f'<Channel ID="Channel:0:{k}" Name={quoteattr(c.name)} SamplesPerPixel="1" Color="{_ome_colour(c.color)}"/>'
        for k, c in enumerate(classes))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:schemaLocation="http://www.openmicroscopy.org/Schemas/OME/2016-06 '
        'http://www.openmicroscopy.org/Schemas/OME/2016-06/ome.xsd">'
        f'<Image ID="Image:0" Name={quoteattr(name)}>'
        f'<Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" SizeX="{width}" SizeY="{height}" '
        f'SizeC="{len(classes)}" SizeZ="1" SizeT="1" PhysicalSizeX="{mpp_x!r}" PhysicalSizeXUnit="µm" '
        f'PhysicalSizeY="{mpp_y!r}" PhysicalSizeYUnit="µm" BigEndian="false">'
        f'{channels}<TiffData IFD="0" PlaneCount="{len(classes)}"/>'
        '</Pixels></Image></OME>'
    )


def _ome_colour(colour: Any) -> int:
    """A class colour ("#rrggbb" or [r, g, b(, a)]) as OME's signed 32-bit RGBA integer."""
    if isinstance(colour, str):
        h = colour.lstrip("#")
        rgba = [int(h[i : i + 2], 16) for i in (0, 2, 4)] + [255]
    else:
        rgba = [int(v) for v in colour] + ([255] if len(colour) == 3 else [])
    value = (rgba[0] << 24) | (rgba[1] << 16) | (rgba[2] << 8) | rgba[3]
    return value - (1 << 32) if value >= 1 << 31 else value


def write_probs_tiff(result: MaskResult, name: str, classes: tuple[ClassInfo, ...], path: Path) -> dict[str, Any]:
    """Write probs.ome.tif atomically from the stitcher's raw probabilities; returns its description."""
    import pyvips

    t0 = time.perf_counter()
    c, w, h = len(classes), result.mask_width, result.mask_height
    img = open_probs(result, c)
    planes = pyvips.Image.arrayjoin([img.extract_band(k) for k in range(c)], across=1) if c > 1 else img
    planes = planes.copy(interpretation="b-w")
    planes.set_type(pyvips.GValue.gint_type, "page-height", h)
    planes.set_type(pyvips.GValue.gstr_type, "image-description", ome_xml(name, w, h, result.mpp, result.mpp,
                                                                           classes))
    bigtiff = w * h * c > BIGTIFF_BYTES
    with atomic_path(Path(path)) as tmp:
        try:
            planes.tiffsave(str(tmp), tile=True, tile_width=TILE, tile_height=TILE, pyramid=True, subifd=True,
                            region_shrink="mean", compression=COMPRESSION, predictor="horizontal",
                            xres=1000.0 / result.mpp, yres=1000.0 / result.mpp, resunit="cm", bigtiff=bigtiff)
        except pyvips.Error as exc:
            raise OutputError(f"{path}: libvips could not write the probabilities: {exc}".strip()) from exc
        finally:
            del planes, img
        levels = 1 + set_level_resolutions(tmp, result.mpp, result.mpp) // c  # each level's own pixel size
    seconds = time.perf_counter() - t0
    logger.info("wrote %s (%dx%d, %d channels) in %.2f s", path, w, h, c, seconds)
    return {
        "file": Path(path).name,
        "width": w,
        "height": h,
        "channels": [cl.name for cl in classes],
        "levels": levels,
        "mpp": result.mpp,
        "dtype": "uint8",
        "scale": PROBS_SCALE,
        "tile": TILE,
        "compression": COMPRESSION,
        "bigtiff": bigtiff,
        "seconds": seconds,
    }


@dataclass(frozen=True)
class ProbsWriter:
    """Format "probs": `probs.ome.tif`, the class probabilities at the model's pixel size."""

    name: str = PROBS_FORMAT
    file_name: str = "probs.ome.tif"

    def write(self, context: OutputContext) -> OutputRecord:
        path = context.out_dir / self.file_name
        return OutputRecord(path, write_probs_tiff(context.result, Path(context.slide.path).name, context.classes,
                                                   path))

    def is_current(self, report: Mapping[str, Any], options: OutputOptions) -> bool:
        return True  # probs.ome.tif takes no options


class ProbabilityGrid:
    """One class's probabilities at a class grid's size (`raster.class_grid`), read window by window.

    A grid pixel holds the mean of the mask pixels of the k x k block it covers (k: `class_grid`'s block
    factor), then nearest neighbour for any remainder, as the grid's classes; at the mask's own size it is the
    stitcher's values. Lazy: libvips computes only the windows asked for, from the raw file on disk."""

    def __init__(self, result: MaskResult, num_classes: int, width: int, height: int) -> None:
        from slidefuse.runtime.outputs.raster import _block_plan

        self._image = open_probs(result, num_classes)
        self._k = _block_plan(result, width, height)[0] if (width, height) != (result.mask_width,
                                                                                 result.mask_height) else 1
        self._size = (width, height)
        self._bands: dict[int, Any] = {}

    def _band(self, c: int) -> pyvips.Image:
        band = self._bands.get(c)
        if band is None:
            band = self._image.extract_band(c)
            if self._k > 1:
                band = band.shrink(self._k, self._k)
            w, h = self._size
            if (band.width, band.height) != (w, h):
                band = band.resize(w / band.width, vscale=h / band.height, kernel="nearest")
                band = band.crop(0, 0, w, h) if band.width >= w and band.height >= h else \
                    band.embed(0, 0, w, h, extend="copy")
            band = self._bands.setdefault(c, band.cast("uchar"))
        return band

    def window(self, c: int, rows: slice, cols: slice) -> np.ndarray:
        """uint8 ``[rows, cols]`` of class ``c``'s probabilities (round(p * 255)) over a window of the grid."""
        y0, x0 = rows.start or 0, cols.start or 0
        out = self._band(c).crop(x0, y0, cols.stop - x0, rows.stop - y0).numpy()
        return np.asarray(out).reshape(rows.stop - y0, cols.stop - x0)


def region_means(labels: np.ndarray, n: int, probs: np.ndarray) -> np.ndarray:
    """float64 ``[n + 1]``: the mean of ``probs`` (uint8 round(p * 255)) over each label 1..n of ``labels``,
    as a probability in [0, 1] (index 0: unused)."""
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    sums = np.bincount(labels.ravel(), weights=probs.ravel(), minlength=n + 1)
    return np.divide(sums, counts * float(PROBS_SCALE), out=np.zeros(n + 1), where=counts > 0)
