"""The stitched class-index mask as a lazy pyvips image, and class-preserving downsampling.

Frames: `mask_` pixels are the stitcher's raw file at `MaskResult.mpp`; any downsampled grid has its own
size and is mapped onto the slide by `l0 = grid px * slide.width / grid_width` (and likewise for y).
Downsampling never interpolates class indices: `nearest` picks one source pixel, `mode` picks the most
frequent class in each output pixel's footprint (ties go to the lower class index).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

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

    _check_raw(result)
    return pyvips.Image.rawload(
        str(result.raw_path), result.mask_width, result.mask_height, 1, format="uchar", interpretation="b-w"
    )


def _check_raw(result: MaskResult) -> None:
    """Raise OutputError unless the raw mask file exists and holds mask_width * mask_height bytes."""
    raw = result.raw_path
    if not raw.is_file():
        raise OutputError(f"{raw}: the stitched mask file is missing; the segmentation did not finish")
    expected = result.mask_width * result.mask_height
    size = raw.stat().st_size
    if size != expected:
        raise OutputError(
            f"{raw}: {size} bytes, expected {result.mask_width}x{result.mask_height} = {expected} bytes of "
            "uint8 class indices; the stitched mask is truncated or its size was reported wrongly"
        )
    if result.mask_width < 1 or result.mask_height < 1:
        raise OutputError(f"{raw}: empty mask ({result.mask_width}x{result.mask_height})")


def _fit(img: pyvips.Image, width: int, height: int) -> pyvips.Image:
    """Crop or pad (by edge replication) `img` to exactly `width` x `height` (fixes resize rounding)."""
    if img.width == width and img.height == height:
        return img
    if img.width >= width and img.height >= height:
        return img.crop(0, 0, width, height)
    return img.embed(0, 0, width, height, extend="copy")


def block_mode(result: MaskResult, k: int, out: Path | None = None, *, num_classes: int) -> Any:
    """Mode of each k x k block of the raw mask, streamed band by band with plain file reads.

    Output is uint8 [ceil(h / k), ceil(w / k)] class indices (edge blocks are partial; ties go to the
    lower class index): returned as an array, or written to the raw file `out` (returning `out`) so that
    memory stays bounded by one band whatever the mask's size. (Not a memory map: every page of a mapped
    file that was read stays in the process's resident set until it is unmapped, so a map would make peak
    RSS grow with the slide's area.)
    """
    if k < 1:
        raise UsageError(f"block size {k} must be >= 1")
    w, h = result.mask_width, result.mask_height
    ow, oh = -(-w // k), -(-h // k)
    src = open(result.raw_path, "rb")  # closed in the finally below
    rows_per_band = max(1, (1 << 24) // max(w * k, 1))  # about 16 MB of source per band
    count_dtype = np.uint16 if k * k < (1 << 16) else np.uint32
    dst: Any = np.empty((oh, ow), np.uint8) if out is None else open(out, "wb")
    try:
        for r0 in range(0, oh, rows_per_band):
            r1 = min(oh, r0 + rows_per_band)
            n_rows = min(h, r1 * k) - r0 * k
            band = np.fromfile(src, dtype=np.uint8, count=n_rows * w).reshape(n_rows, w)
            pad_h, pad_w = (r1 - r0) * k - band.shape[0], ow * k - w
            if pad_h or pad_w:  # partial edge blocks: pad with a value that is no class
                band = np.pad(band, ((0, pad_h), (0, pad_w)), constant_values=255)
            rows = band.reshape(r1 - r0, k, ow * k)
            best = np.zeros((r1 - r0, ow), count_dtype)
            idx = np.zeros((r1 - r0, ow), np.uint8)
            for c in range(num_classes):
                # Count class c per block with k + k strided adds (much faster than a 4-d sum).
                col = (rows[:, 0] == c).astype(count_dtype)
                for i in range(1, k):
                    col += rows[:, i] == c
                n = col[:, 0::k].copy()
                for j in range(1, k):
                    n += col[:, j::k]
                better = n > best
                idx[better] = c
                best[better] = n[better]
            if out is None:
                dst[r0:r1] = idx
            else:
                dst.write(idx.tobytes())
    finally:
        if out is not None:
            dst.close()
        src.close()
    return dst if out is None else out


def downsample_classes(
    img: pyvips.Image, width: int, height: int, *, num_classes: int, method: str = "nearest"
) -> pyvips.Image:
    """Resize a 1-band uchar class-index image to `width` x `height` by nearest neighbour (lazy).

    Each output pixel takes one source pixel, so class indices are never mixed. For the block mode, use
    `block_mode` first (integer factor), then this for any remainder. Returns 1-band uchar.
    """
    if method != "nearest":
        raise UsageError(f"downsampling method {method!r} is unknown here; use 'nearest' (or block_mode)")
    if width < 1 or height < 1:
        raise UsageError(f"cannot resize a mask to {width}x{height}; sizes must be >= 1")
    if img.width == width and img.height == height:
        return img
    out = img.resize(width / img.width, vscale=height / img.height, kernel="nearest")
    return _fit(out, width, height).cast("uchar")


def _block_plan(result: MaskResult, width: int, height: int) -> tuple[int, str]:
    """(k, description) of reducing the mask to `width` x `height`: block mode over k x k px (k = 1: none),
    then nearest neighbour for any remainder."""
    w, h = result.mask_width, result.mask_height
    k = max(1, min(w // width, h // height))
    if k == 1:
        return 1, "nearest"
    exact = (-(-w // k), -(-h // k)) == (width, height)
    return k, f"mode of {k}x{k} blocks" + ("" if exact else " + nearest")


def mode_downsample(
    result: MaskResult, width: int, height: int, *, num_classes: int, scratch: Path
) -> tuple[pyvips.Image, str]:
    """The mask at `width` x `height`: block mode over floor(scale) px, then nearest for the remainder.

    The block mode goes to the raw file `scratch` (the caller removes it). Returns (lazy 1-band uchar image,
    description of the method). `class_grid` gives the same pixels as an array in memory.
    """
    import pyvips

    k, method = _block_plan(result, width, height)
    if k == 1:
        return downsample_classes(open_mask(result), width, height, num_classes=num_classes), method
    block_mode(result, k, scratch, num_classes=num_classes)
    w, h = -(-result.mask_width // k), -(-result.mask_height // k)
    img = pyvips.Image.rawload(str(scratch), w, h, 1, format="uchar", interpretation="b-w")
    # The last block column/row may be partial: map the full extent onto the requested size.
    return downsample_classes(img, width, height, num_classes=num_classes), method


def class_grid(result: MaskResult, width: int, height: int, *, num_classes: int) -> tuple[np.ndarray, str]:
    """The mask at `width` x `height` as a uint8 [height, width] array, by the same method and with the same
    pixels as `mode_downsample`, and the method's description.

    The raw file is read with plain reads, never memory-mapped, and nothing else is kept: the array is the only
    copy. (Every page of a mapped file that was read stays resident until it is unmapped, and libvips keeps
    its mapping in its operation cache; a copy through libvips doubles the grid.)
    """
    _check_raw(result)
    w, h = result.mask_width, result.mask_height
    if (width, height) == (w, h):
        return np.fromfile(result.raw_path, dtype=np.uint8, count=w * h).reshape(h, w), "none"
    k, method = _block_plan(result, width, height)
    if k == 1:
        arr = np.fromfile(result.raw_path, dtype=np.uint8, count=w * h).reshape(h, w)
    else:
        arr = block_mode(result, k, num_classes=num_classes)
        if arr.shape == (height, width):
            return arr, method
    import pyvips

    img = downsample_classes(pyvips.Image.new_from_array(arr), width, height, num_classes=num_classes)
    grid = np.asarray(img.numpy(), dtype=np.uint8)
    del img, arr
    return (grid[..., 0] if grid.ndim == 3 else grid), method


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
        scale = 1.0 / math.ceil((w * h / max_pixels) ** 0.5)  # an integer factor: whole blocks per pixel
    return max(1, round(w * scale)), max(1, round(h * scale))
