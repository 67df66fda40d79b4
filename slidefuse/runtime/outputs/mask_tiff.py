"""`mask.tif`: the class-index mask as a pyramidal, tiled, losslessly compressed TIFF.

Layout: 1 band, uint8 class indices (0 = background), 256x256 tiles, deflate compression, a full pyramid
(each level half the previous, down to one tile) in the main IFD chain, which is what OpenSlide's
generic-tiff driver, libvips and QuPath (Bio-Formats or OpenSlide) read. Pyramid levels are shrunk with
the 2x2 mode, so every level holds exact class indices too. The pixel size is written as
XResolution/YResolution in pixels per centimetre with ResolutionUnit = centimetre: OpenSlide exposes them
as `tiff.XResolution` / `tiff.ResolutionUnit` (and OpenSlide >= 4 as `openslide.mpp-x`), Bio-Formats as the
physical pixel size.

Geometry: the TIFF covers the same physical extent as the slide; one TIFF pixel spans
`slide.width / tiff_width` level-0 pixels horizontally (and likewise vertically), and the written pixel
size is the mask's extent divided by the TIFF size, so `tiff px * tiff mpp == mask px * mask mpp` exactly.

`mask.palette.tif` (format "palette", opt-in): the same TIFF with a colour map (Photometric = palette, ColorMap
from the bundle's class colours), so viewers show the classes in their colours while the stored values stay
class indices. mask.tif itself stays a plain grey image because libvips (so pyvips, and slidefuse's own
`mask()` / `mask_array()`) and OpenSlide expand a palette to RGB(A) colours on reading; tifffile returns the
indices (and the colour map beside them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slidefuse.atomic import TMP_SUFFIX, atomic_path, temporary_path
from slidefuse.errors import UsageError
from slidefuse.runtime.outputs.base import OutputContext, OutputOptions, OutputRecord
from slidefuse.runtime.outputs.raster import OutputError, mode_downsample, open_mask
from slidefuse.runtime.outputs.tiff_tags import add_palette
from slidefuse.runtime.types import MaskResult, SlideInfo

logger = logging.getLogger(__name__)

TILE = 256  # TIFF tile side in px
COMPRESSION = "deflate"  # lossless: class indices must stay exact (never jpeg)
BIGTIFF_PIXELS = 1 << 31  # above this many pixels, write BigTIFF (classic TIFF stops at 4 GB)


def tiff_size(result: MaskResult, mask_mpp: float | None) -> tuple[int, int]:
    """Width and height of `mask.tif` in px: the mask's size, or that size at `mask_mpp` um/px."""
    if mask_mpp is None:
        return result.mask_width, result.mask_height
    if mask_mpp < result.mpp * (1 - 1e-6):
        raise UsageError(
            f"mask_mpp={mask_mpp:g} is finer than the model's {result.mpp:g} um/px; "
            f"pass a value >= {result.mpp:g} or leave it out", field="mask_mpp"
        )
    scale = result.mpp / mask_mpp
    return max(1, round(result.mask_width * scale)), max(1, round(result.mask_height * scale))


def _save_options(mpp_x: float, mpp_y: float, bigtiff: bool) -> dict[str, Any]:
    """libvips `tiffsave` options of mask.tif: a tiled deflate pyramid, mode-shrunk, pixel size in px/cm."""
    return {
        "tile": True,
        "tile_width": TILE,
        "tile_height": TILE,
        "pyramid": True,
        "region_shrink": "mode",
        "compression": COMPRESSION,
        "predictor": "none",  # class indices are labels, not a signal: differencing only costs time
        "xres": 1000.0 / mpp_x,  # px per mm; libvips converts to the resunit
        "yres": 1000.0 / mpp_y,
        "resunit": "cm",
        "bigtiff": bigtiff,
        "strip": True,
    }


def pyramid_levels(width: int, height: int) -> int:
    """Number of levels in mask.tif's pyramid: each half the previous, down to one tile."""
    levels = 1
    while width > TILE or height > TILE:
        width, height = (width + 1) // 2, (height + 1) // 2
        levels += 1
    return levels


def write_mask_tiff(
    result: MaskResult,
    slide: SlideInfo,
    path: Path,
    *,
    num_classes: int,
    mask_mpp: float | None = None,
    palette: list[tuple[int, int, int]] | None = None,
) -> dict[str, Any]:
    """Write `mask.tif` atomically from the raw mask and return its description for the report.

    `mask_mpp` (um/px, >= result.mpp) writes a coarser TIFF, each pixel the mode of the classes under it.
    The returned dict holds width, height, mpp_x, mpp_y (um/px), l0 px per TIFF px, levels, compression.
    `palette`: RGB colour of each class index, written as the TIFF's colour map (see `add_palette`).
    """
    t0 = time.perf_counter()
    width, height = tiff_size(result, mask_mpp)
    img = open_mask(result)
    method = "none"
    scratch = Path(str(temporary_path(Path(path))) + ".raw" + TMP_SUFFIX)  # block modes, removed below
    if (width, height) != (result.mask_width, result.mask_height):
        img, method = mode_downsample(result, width, height, num_classes=num_classes, scratch=scratch)
    mpp_x = result.mask_width * result.mpp / width  # um per TIFF px
    mpp_y = result.mask_height * result.mpp / height
    bigtiff = width * height > BIGTIFF_PIXELS
    with atomic_path(Path(path)) as tmp:
        try:
            img.tiffsave(str(tmp), **_save_options(mpp_x, mpp_y, bigtiff))
        except Exception as exc:  # pyvips.Error, with libvips' own message
            raise OutputError(f"{path}: libvips could not write the mask TIFF: {exc}".strip()) from exc
        finally:
            del img
            scratch.unlink(missing_ok=True)
        if palette is not None:
            add_palette(tmp, palette)
    seconds = time.perf_counter() - t0
    logger.info("wrote %s (%dx%d, %.3g um/px) in %.2f s", path, width, height, mpp_x, seconds)
    return {
        "file": Path(path).name,
        "width": width,
        "height": height,
        "mpp_x": mpp_x,
        "mpp_y": mpp_y,
        "l0_per_px_x": slide.width / width,
        "l0_per_px_y": slide.height / height,
        "downsampling": method,
        "levels": pyramid_levels(width, height),
        "tile": TILE,
        "compression": COMPRESSION,
        "bigtiff": bigtiff,
        "resolution_unit": "centimeter",
        "photometric": "palette" if palette is not None else "min-is-black",
        "seconds": seconds,
    }


def requested_mask_mpp(result: MaskResult, mask_mpp: float | None) -> float | None:
    """None when mask.tif is at the model's resolution, else the requested um/px."""
    if mask_mpp is None or abs(mask_mpp - result.mpp) <= 1e-9 * result.mpp:
        return None
    return float(mask_mpp)


def _same_mpp(a: float | None, b: float | None) -> bool:
    """Whether two requested pixel sizes (um/px, None = the model's) are the same, to 1e-9 relative."""
    if a is None or b is None:
        return a is None and b is None
    return abs(float(a) - float(b)) <= 1e-9 * float(b)


@dataclass(frozen=True)
class MaskTiffWriter:
    """Format "tiff": `mask.tif` at the model's pixel size, or at `options.mask_mpp`."""

    name: str = "tiff"
    file_name: str = "mask.tif"

    def write(self, context: OutputContext) -> OutputRecord:
        path = context.out_dir / self.file_name
        mask_mpp = context.options.mask_mpp
        info = write_mask_tiff(context.result, context.slide, path, num_classes=len(context.classes),
                               mask_mpp=mask_mpp)
        info["requested_mask_mpp"] = requested_mask_mpp(context.result, mask_mpp)
        return OutputRecord(path, info)

    def is_current(self, report: Mapping[str, Any], options: OutputOptions) -> bool:
        """True when the recorded mask.tif was written at the pixel size `options.mask_mpp` asks for."""
        return _written_at_mask_mpp(report, self.name, options)


def _written_at_mask_mpp(report: Mapping[str, Any], name: str, options: OutputOptions) -> bool:
    """Whether format `name`'s file in `report` was written at the pixel size `options.mask_mpp` asks for."""
    want = options.mask_mpp
    model_mpp = report.get("mask", {}).get("mpp")
    if want is not None and model_mpp and _same_mpp(want, float(model_mpp)):
        want = None  # asking for the model's own pixel size is asking for none
    return _same_mpp(report.get("outputs", {}).get(name, {}).get("requested_mask_mpp"), want)


@dataclass(frozen=True)
class PaletteTiffWriter:
    """Format "palette": `mask.palette.tif`, mask.tif with the class colours as its TIFF colour map."""

    name: str = "palette"
    file_name: str = "mask.palette.tif"

    def write(self, context: OutputContext) -> OutputRecord:
        path = context.out_dir / self.file_name
        mask_mpp = context.options.mask_mpp
        colours = [(int(c.color[0]), int(c.color[1]), int(c.color[2])) for c in context.classes]
        info = write_mask_tiff(context.result, context.slide, path, num_classes=len(context.classes),
                               mask_mpp=mask_mpp, palette=colours)
        info["requested_mask_mpp"] = requested_mask_mpp(context.result, mask_mpp)
        return OutputRecord(path, info)

    def is_current(self, report: Mapping[str, Any], options: OutputOptions) -> bool:
        """As mask.tif: current when written at the pixel size `options.mask_mpp` asks for."""
        return _written_at_mask_mpp(report, self.name, options)
