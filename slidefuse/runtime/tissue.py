"""Tissue detection on a slide thumbnail: Otsu on HSV saturation, then morphological clean-up.

Works in the thumbnail frame (``thumb_`` pixels, see ``coords``): the input is the RGB thumbnail, the output a
boolean mask of the same height and width. Tile selection maps model-frame tile boxes into that frame with
``coords.model_box_to_thumb`` and asks ``tissue_fraction_in_box`` / ``tiles_touching_tissue``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from slidefuse.numbers import finite_float, integer
from slidefuse.runtime import coords

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TissueParams:
    thumb_max_side: int = 2048  # longer side of the thumbnail tissue is detected on, px
    min_saturation: float = 0.07  # saturation floor (0..1): the Otsu threshold is never below this
    max_saturation_threshold: float = 0.35  # ceiling for the Otsu threshold, so faint tissue stays in
    white_value: float = 0.85  # pixels brighter than this (HSV value, 0..1) and below the threshold are glass
    black_value: float = 0.12  # pixels darker than this (HSV value, 0..1) are pen/dirt/borders, never tissue
    smoothing_px: int = 1  # half-width of the box filter on saturation before thresholding, thumb px (0: off)
    opening_radius_um: float = 4.0  # opening radius in um: removes speckle thinner than about 2x this
    closing_radius_um: float = 16.0  # closing radius in um: bridges gaps between nearby tissue pieces
    min_object_fraction: float = 1e-4  # drop pieces smaller than this fraction of the thumbnail area
    max_hole_fraction: float = 1e-3  # fill holes smaller than this fraction of the thumbnail area
    tile_min_fraction: float = 0.0  # a tile "touches tissue" when its tissue fraction is > this (0: any pixel)
    detect_mpp: float = 4.0  # finest pixel size (um/px) detection runs at: finer thumbnails are block-averaged

    def __post_init__(self) -> None:
        """Every number finite and in its range (UsageError naming the field); numpy scalars become floats."""
        integer(self.thumb_max_side, field="thumb_max_side", minimum=1)
        integer(self.smoothing_px, field="smoothing_px", minimum=0)
        for name in ("min_saturation", "max_saturation_threshold", "white_value", "black_value",
                     "min_object_fraction", "max_hole_fraction", "tile_min_fraction"):
            object.__setattr__(self, name, finite_float(getattr(self, name), field=name, minimum=0.0, maximum=1.0))
        for name in ("opening_radius_um", "closing_radius_um"):
            object.__setattr__(self, name, finite_float(getattr(self, name), field=name, minimum=0.0))
        object.__setattr__(self, "detect_mpp", finite_float(self.detect_mpp, field="detect_mpp", above=0.0))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def saturation_value(thumbnail_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation and value of an RGB image: two float32 ``[h, w]`` arrays in 0..1."""
    # max/min in uint8 first (elementwise over the channel planes: faster than a reduction over the last
    # axis), then two float conversions of [h, w] instead of one of [h, w, 3]
    r, g, b = thumbnail_rgb[..., 0], thumbnail_rgb[..., 1], thumbnail_rgb[..., 2]
    vmax = np.maximum(np.maximum(r, g), b)
    spread = (vmax - np.minimum(np.minimum(r, g), b)).astype(np.float32)
    vmax_f = vmax.astype(np.float32)
    sat = np.divide(spread, vmax_f, out=np.zeros_like(spread), where=vmax > 0)
    vmax_f *= np.float32(1 / 255)
    return sat, vmax_f


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample of values in 0..1 (maximises the between-class variance)."""
    if values.size == 0:
        return 1.0
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1e-12)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


# Up to this radius (px) a disk-shaped binary erosion is cheaper than a distance transform; above it the
# transform wins, since its cost does not grow with the radius.
_SMALL_RADIUS_PX = 5.0


def _disk(radius: float) -> np.ndarray:
    r = int(np.floor(radius))
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return np.asarray(x * x + y * y <= radius * radius)


def _erode(mask: np.ndarray, radius: float) -> np.ndarray:
    """Erosion by a disk of ``radius`` px (pixels within ``radius`` of background become background); outside
    the image counts as foreground, so objects touching the border are not eaten from that side."""
    if radius <= _SMALL_RADIUS_PX:
        return np.asarray(ndimage.binary_erosion(mask, structure=_disk(radius), border_value=1))
    padded = np.pad(mask, 1, constant_values=True)
    return np.asarray(ndimage.distance_transform_edt(padded)[1:-1, 1:-1] > radius)


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Dilation by a disk of ``radius`` px (outside the image counts as background)."""
    if not mask.any():
        return mask.copy()
    if radius <= _SMALL_RADIUS_PX:
        # dilation of the mask is the complement of the erosion of its complement (the disk is symmetric)
        return ~np.asarray(ndimage.binary_erosion(~mask, structure=_disk(radius), border_value=1))
    return np.asarray(ndimage.distance_transform_edt(~mask) <= radius)


def binary_open(mask: np.ndarray, radius: float) -> np.ndarray:
    """Morphological opening of bool ``[h, w]`` by a disk of ``radius`` px (no-op below 1 px)."""
    return _dilate(_erode(mask, radius), radius) & mask if radius >= 1 else mask


def binary_close(mask: np.ndarray, radius: float) -> np.ndarray:
    """Morphological closing of bool ``[h, w]`` by a disk of ``radius`` px (no-op below 1 px)."""
    return _erode(_dilate(mask, radius), radius) | mask if radius >= 1 else mask


def detect_tissue(thumbnail_rgb: np.ndarray, params: TissueParams | None = None, thumb_mpp: float = 8.0) -> np.ndarray:
    """Tissue mask of a thumbnail.

    ``thumbnail_rgb``: uint8 ``[h, w, 3]`` RGB, 0..255 (thumb frame). ``thumb_mpp``: its pixel size in um/px,
    used to turn the morphological radii of ``params`` (in um) into pixels. Returns bool ``[h, w]``, True on
    tissue. Glass (near-white), near-black pixels and small specks are False; a blank image gives all False.
    """
    p = params or TissueParams()
    if thumbnail_rgb.ndim != 3 or thumbnail_rgb.shape[2] != 3 or thumbnail_rgb.dtype != np.uint8:
        raise ValueError(f"detect_tissue needs uint8 [h, w, 3] RGB, got {thumbnail_rgb.dtype} {thumbnail_rgb.shape}")
    k = int(p.detect_mpp // thumb_mpp) if thumb_mpp > 0 else 1
    if k >= 2 and min(thumbnail_rgb.shape[:2]) >= 4 * k:
        # Detection cost grows with pixel count; tissue outlines need no more than ~detect_mpp. Average k x k
        # blocks, detect there, and give every thumbnail pixel its block's answer.
        h, w = thumbnail_rgb.shape[:2]
        hk, wk = -(-h // k), -(-w // k)
        padded = np.pad(thumbnail_rgb, ((0, hk * k - h), (0, wk * k - w), (0, 0)), mode="edge")
        small = padded.reshape(hk, k, wk, k, 3).mean(axis=(1, 3)).round().astype(np.uint8)
        small_mask = detect_tissue(small, p, thumb_mpp=thumb_mpp * k)
        return np.repeat(np.repeat(small_mask, k, axis=0), k, axis=1)[:h, :w]
    sat, val = saturation_value(thumbnail_rgb)
    if p.smoothing_px > 0:
        sat = ndimage.uniform_filter(sat, size=2 * p.smoothing_px + 1, mode="nearest")
    dark = val < p.black_value
    sample = sat[~dark]
    thr = otsu_threshold(sample) if sample.size else 1.0
    thr = min(max(thr, p.min_saturation), max(p.max_saturation_threshold, p.min_saturation))
    glass = (val >= p.white_value) & (sat < thr)
    mask = ~dark & ~glass & (sat > thr)
    log.debug("tissue: Otsu saturation threshold %.3f on %d pixels", thr, sample.size)

    area = mask.size
    mask = binary_open(mask, p.opening_radius_um / thumb_mpp)
    mask = binary_close(mask, p.closing_radius_um / thumb_mpp)
    mask = remove_small_objects(mask, max(1, int(p.min_object_fraction * area)))
    mask = fill_small_holes(mask, max(1, int(p.max_hole_fraction * area)))
    return np.asarray(mask, dtype=bool)


def remove_small_objects(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """bool ``[h, w]`` without 8-connected components smaller than ``min_pixels``."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_pixels
    keep[0] = False
    return np.asarray(keep[labels], dtype=bool)


def fill_small_holes(mask: np.ndarray, max_pixels: int) -> np.ndarray:
    """bool ``[h, w]`` with enclosed background components (holes) of at most ``max_pixels`` filled."""
    holes = ~mask
    labels, n = ndimage.label(holes)
    if n == 0:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = sizes <= max_pixels
    fill[0] = False
    fill[border] = False
    return np.asarray(mask | fill[labels], dtype=bool)


def tissue_fraction_in_box(mask: np.ndarray, thumb_box: coords.Box) -> float:
    """Fraction (0..1) of the thumb-frame box ``(x, y, w, h)`` that is tissue; parts outside the mask count
    as background. ``mask``: bool ``[thumb_h, thumb_w]``."""
    x, y, w, h = thumb_box
    if w <= 0 or h <= 0:
        return 0.0
    th, tw = mask.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, tw), min(y + h, th)
    if x1 <= x0 or y1 <= y0:
        return 0.0
    return float(np.count_nonzero(mask[y0:y1, x0:x1])) / float(w * h)


def tiles_touching_tissue(
    mask: np.ndarray,
    model_boxes: Sequence[coords.Box],
    mpp: float,
    thumb_mpp: float,
    min_fraction: float = 0.0,
) -> np.ndarray:
    """Which model-frame tile boxes ``(x, y, w, h)`` touch tissue: bool ``[len(model_boxes)]``.

    Each box is mapped to the thumbnail (covering it: floor start, ceil end) and kept when its tissue fraction
    is above ``min_fraction`` (0 = any tissue pixel). Uses a summed-area table, so it costs O(1) per tile.
    """
    th, tw = mask.shape
    # int32 holds any count up to 2**31 thumbnail pixels; row-wise then in-place column-wise cumulative sums
    sat = np.zeros((th + 1, tw + 1), dtype=np.int64 if th * tw >= 2**31 else np.int32)
    inner = sat[1:, 1:]
    np.cumsum(mask, axis=1, dtype=sat.dtype, out=inner)
    np.cumsum(inner, axis=0, out=inner)
    out = np.zeros(len(model_boxes), dtype=bool)
    for n, box in enumerate(model_boxes):
        x, y, w, h = coords.model_box_to_thumb(box, mpp, thumb_mpp, (th, tw))
        if w == 0 or h == 0:
            continue
        count = sat[y + h, x + w] - sat[y, x + w] - sat[y + h, x] + sat[y, x]
        full = coords.model_box_to_thumb(box, mpp, thumb_mpp)
        out[n] = count > min_fraction * full[2] * full[3]
    return out
