"""The stitched class-index mask as a lazy pyvips image, and class-preserving downsampling.

Frames: `mask_` pixels are the stitcher's raw file at `MaskResult.mpp`; any downsampled grid has its own
size and is mapped onto the slide by `l0 = grid px * slide.width / grid_width` (and likewise for y).
Downsampling never interpolates class indices: `nearest` picks one source pixel, `mode` picks the most
frequent class in each output pixel's footprint (ties go to the lower class index).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from slidefuse.errors import SlidefuseError, UsageError

if TYPE_CHECKING:
    import pyvips

    from slidefuse.runtime.types import MaskResult

logger = logging.getLogger(__name__)

DOWNSAMPLE_METHODS = ("nearest", "mode")


class OutputError(SlidefuseError, OSError):
    """An output that cannot be written, or a stitched mask that does not match its description."""


def open_mask(result: MaskResult) -> pyvips.Image:
    """The raw mask file as a lazy 1-band uchar pyvips image, `result.mask_width` x `result.mask_height`.

    Pixels are class indices (uint8, 0 = background). The file is memory-mapped by libvips, so nothing is
    read until pixels are needed and memory stays bounded by what a pipeline computes at a time.
    """
    import pyvips

    raw = result.raw_path
    if not raw.is_file():
        raise OutputError(f"{raw}: the stitched mask file is missing; the segmentation did not finish")
    expected = result.mask_width * result.mask_height
    size = raw.stat().st_size
    if size != expected:
        raise OutputError(
            f"{raw}: {size} bytes, expected {result.mask_width}x{result.mask_height} = {expected} bytes of uint8 "
            "class indices; the stitched mask is truncated or its size was reported wrongly"
        )
    if result.mask_width < 1 or result.mask_height < 1:
        raise OutputError(f"{raw}: empty mask ({result.mask_width}x{result.mask_height})")
    return pyvips.Image.rawload(
        str(raw), result.mask_width, result.mask_height, 1, format="uchar", interpretation="b-w"
    )


def _fit(img: pyvips.Image, width: int, height: int) -> pyvips.Image:
    """Crop or pad (by edge replication) `img` to exactly `width` x `height` (fixes resize rounding)."""
    if img.width == width and img.height == height:
        return img
    if img.width >= width and img.height >= height:
        return img.crop(0, 0, width, height)
    return img.embed(0, 0, width, height, extend="copy")


def downsample_classes(
    img: pyvips.Image, width: int, height: int, *, num_classes: int, method: str = "mode"
) -> pyvips.Image:
    """Resize a 1-band uchar class-index image to `width` x `height` without mixing class indices.

    `mode`: each output pixel takes the class that covers most of its footprint (box-averaged class
    fractions, argmax); `nearest`: each output pixel takes one source pixel. Upsampling (a size larger
    than the source) always uses nearest. The result is lazy, 1-band uchar, values in [0, num_classes).
    """
    if method not in DOWNSAMPLE_METHODS:
        raise UsageError(f"downsampling method {method!r} is unknown; use one of {', '.join(DOWNSAMPLE_METHODS)}")
    if width < 1 or height < 1:
        raise UsageError(f"cannot resize a mask to {width}x{height}; sizes must be >= 1")
    if img.width == width and img.height == height:
        return img
    hscale = width / img.width
    vscale = height / img.height
    if method == "nearest" or (hscale >= 1 and vscale >= 1) or num_classes <= 1:
        out = img.resize(hscale, vscale=vscale, kernel="nearest")
        return _fit(out, width, height).cast("uchar")
    def fraction(c: int) -> pyvips.Image:
        frac = (img == c).cast("float").resize(hscale, vscale=vscale, kernel="linear")
        return _fit(frac, width, height)

    best_frac = fraction(0)
    best_idx = best_frac * 0
    for c in range(1, num_classes):
        frac = fraction(c)
        better = frac > best_frac
        best_idx = better.ifthenelse(c, best_idx)
        best_frac = better.ifthenelse(frac, best_frac)
    return best_idx.cast("uchar")


def grid_size_for(result: MaskResult, target_mpp: float | None, max_pixels: int | None) -> tuple[int, int]:
    """Size of a grid over the mask at `target_mpp` (um/px; None = the mask's own), shrunk so that it holds
    at most `max_pixels` pixels (None = no cap). Never finer than the mask itself.
    """
    w, h = result.mask_width, result.mask_height
    scale = 1.0
    if target_mpp is not None:
        if target_mpp <= 0:
            raise UsageError(f"pixel size {target_mpp} um/px must be > 0")
        scale = min(1.0, result.mpp / target_mpp)
    if max_pixels is not None and w * h * scale * scale > max_pixels:
        scale = (max_pixels / (w * h)) ** 0.5
    return max(1, round(w * scale)), max(1, round(h * scale))
