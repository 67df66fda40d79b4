"""Colour helpers shared by the QC methods: smoothing at a physical scale, HSV, optical density."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def smoothed_rgb(thumb_rgb: np.ndarray, thumb_mpp: float, smooth_um: float) -> np.ndarray:
    """float32 ``[h, w, 3]`` in 0..1: the thumbnail box-averaged over about ``smooth_um`` um (a single nucleus
    or a speck of dirt averages out with what surrounds it; a marker stroke, hundreds of um wide, does not)."""
    k = max(1, int(round(smooth_um / thumb_mpp)))
    rgb = thumb_rgb.astype(np.float32) * np.float32(1 / 255)
    if k == 1:
        return rgb
    return np.asarray(ndimage.uniform_filter(rgb, size=(k, k, 1), mode="nearest"), dtype=np.float32)


def hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees (0..360), saturation and value (0..1) of float RGB ``[h, w, 3]`` in 0..1 (float32; grey
    pixels have hue 0, black ones saturation 0)."""
    r, g, b = (np.asarray(rgb[..., i], dtype=np.float32) for i in range(3))
    v = np.maximum(np.maximum(r, g), b)
    spread = v - np.minimum(np.minimum(r, g), b)
    s = np.divide(spread, v, out=np.zeros_like(v), where=v > 0)
    safe = np.where(spread > 0, spread, np.float32(1))
    h = np.where(v == r, (g - b) / safe, np.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = np.where(spread > 0, (h * np.float32(60)) % np.float32(360), np.float32(0))
    return np.asarray(h, dtype=np.float32), s, v


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Summed optical density ``[h, w]`` of float RGB in 0..1: sum over channels of -log10(transmittance).
    Two layers of the same tissue (a fold) have twice the density of one."""
    return np.asarray(-np.log10(np.clip(rgb, 1 / 255, 1.0)).sum(axis=-1), dtype=np.float32)


def disk(radius_px: float) -> np.ndarray:
    """bool structuring element: a disk of ``radius_px`` px (at least a single pixel)."""
    r = max(0, int(np.floor(radius_px)))
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    return np.asarray(x * x + y * y <= max(radius_px, 0.5) ** 2)


def block_average(thumb_rgb: np.ndarray, k: int) -> np.ndarray:
    """uint8 ``[ceil(h/k), ceil(w/k), 3]``: the mean of each k x k block (edge blocks padded by repetition)."""
    if k <= 1:
        return thumb_rgb
    h, w = thumb_rgb.shape[:2]
    hk, wk = -(-h // k), -(-w // k)
    padded = np.pad(thumb_rgb, ((0, hk * k - h), (0, wk * k - w), (0, 0)), mode="edge")
    padded = padded.astype(np.uint16 if k <= 16 else np.uint32)  # k * k * 255 must fit
    rows = padded[0::k].copy()  # strided adds of whole planes: cheaper than a reduction over a strided axis
    for i in range(1, k):
        rows += padded[i::k]
    sums = rows[:, 0::k].copy()
    for i in range(1, k):
        sums += rows[:, i::k]
    return np.asarray((sums + (k * k) // 2) // (k * k), dtype=np.uint8)


def block_any(mask: np.ndarray, k: int) -> np.ndarray:
    """bool ``[ceil(h/k), ceil(w/k)]``: True where any pixel of the k x k block is."""
    if k <= 1:
        return mask
    h, w = mask.shape
    hk, wk = -(-h // k), -(-w // k)
    padded = np.pad(mask, ((0, hk * k - h), (0, wk * k - w)))
    return np.asarray(padded.reshape(hk, k, wk, k).any(axis=(1, 3)))


def block_factor(thumb_mpp: float, work_mpp: float) -> int:
    """Blocks of this many thumbnail px make pixels of about ``work_mpp`` (1 when the thumbnail is coarser)."""
    return max(1, int(work_mpp // thumb_mpp)) if thumb_mpp > 0 else 1


def upsample(mask: np.ndarray, k: int, shape: tuple[int, ...]) -> np.ndarray:
    """bool ``shape[:2]``: each pixel of ``mask`` repeated over its k x k block, cropped."""
    if k <= 1:
        return mask
    return np.asarray(np.repeat(np.repeat(mask, k, axis=0), k, axis=1)[:shape[0], :shape[1]])
