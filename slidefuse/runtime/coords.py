"""Every coordinate-frame conversion of the runtime, in one place.

Frames (named in every variable and function):

- ``l0``: slide level-0 pixels, ``l0_mpp`` microns per pixel.
- ``level``: pixels of one pyramid level, ``downsample`` level-0 px per level px.
- ``model``: pixels at the bundle's microns per pixel ``mpp`` (the frame of tiles and of the stitched mask).
- ``thumb``: pixels of a thumbnail at ``thumb_mpp`` microns per pixel (the frame of the tissue mask).

A frame at ``a`` um/px maps onto one at ``b`` um/px by multiplying coordinates by ``a / b``; a pixel
``(x, y)`` covers ``[x, x + 1) x [y, y + 1)`` in its frame, so corners map exactly and pixel boxes map by
flooring their start and ceiling their end. Boxes are ``(x, y, w, h)`` tuples in the frame their name says.
Sizes of resampled frames are ``round(l0_size * l0_mpp / mpp)`` (at least 1), the rule
``ScaledView`` follows, so ``size * mpp`` matches ``l0_size * l0_mpp`` within half a pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Box = tuple[int, int, int, int]  # (x, y, w, h) in pixels of the frame the variable name says

# Plausible microns per pixel, inclusive: of a slide's level 0 (read from its file, or given with --mpp) and of a
# model (its manifest's mpp). Scanners record 0.1..~10 um/px (0.25 at 40x, 8 at 1.25x); a file recording more
# than 20 um/px carries a placeholder (1000 dpi reads as 25.4 um/px, 1 px/mm as 1000 um/px), not a whole-slide
# level-0 pixel size, and a model at more than 20 um/px sees no tissue structure. Slide readers ignore a file
# value outside it; a user's value outside it needs --force-mpp; a manifest outside it is refused.
PLAUSIBLE_MPP = (0.05, 20.0)


def scale(from_mpp: float, to_mpp: float) -> float:
    """Pixels of the ``to`` frame per pixel of the ``from`` frame (``from_mpp / to_mpp``)."""
    if from_mpp <= 0 or to_mpp <= 0:
        raise ValueError(f"pixel sizes must be positive, got {from_mpp} and {to_mpp} um/px")
    return from_mpp / to_mpp


def resampled_size(l0_w: int, l0_h: int, l0_mpp: float, mpp: float) -> tuple[int, int]:
    """(width, height) in px of the slide resampled from ``l0_mpp`` to ``mpp`` microns per pixel."""
    s = scale(l0_mpp, mpp)
    return max(1, round(l0_w * s)), max(1, round(l0_h * s))


def model_size(l0_w: int, l0_h: int, l0_mpp: float, mpp: float) -> tuple[int, int]:
    """(model_w, model_h): the slide's size in px at the bundle's ``mpp``."""
    return resampled_size(l0_w, l0_h, l0_mpp, mpp)


def thumb_mpp_for(l0_w: int, l0_h: int, l0_mpp: float, max_side: int) -> float:
    """Pixel size (um/px) of a thumbnail whose longer side is ``max_side`` px.

    Never finer than level 0: a slide smaller than ``max_side`` gives its level-0 pixel size.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1 px, got {max_side}")
    return l0_mpp * max(1.0, max(l0_w, l0_h) / max_side)


def l0_to_model_xy(l0_x: float, l0_y: float, l0_mpp: float, mpp: float) -> tuple[float, float]:
    """Level-0 point -> model-frame point."""
    s = scale(l0_mpp, mpp)
    return l0_x * s, l0_y * s


def model_to_l0_xy(model_x: float, model_y: float, mpp: float, l0_mpp: float) -> tuple[float, float]:
    """Model-frame point -> level-0 point."""
    s = scale(mpp, l0_mpp)
    return model_x * s, model_y * s


def model_to_thumb_xy(model_x: float, model_y: float, mpp: float, thumb_mpp: float) -> tuple[float, float]:
    """Model-frame point -> thumbnail point."""
    s = scale(mpp, thumb_mpp)
    return model_x * s, model_y * s


def thumb_to_model_xy(thumb_x: float, thumb_y: float, thumb_mpp: float, mpp: float) -> tuple[float, float]:
    """Thumbnail point -> model-frame point."""
    s = scale(thumb_mpp, mpp)
    return thumb_x * s, thumb_y * s


def l0_to_level_xy(l0_x: float, l0_y: float, downsample: float) -> tuple[float, float]:
    """Level-0 point -> point of a pyramid level with the given downsample."""
    return l0_x / downsample, l0_y / downsample


def map_box(box: Box, from_mpp: float, to_mpp: float, clip_to: tuple[int, int] | None = None) -> Box:
    """Map a pixel box between frames so that the result covers the whole source box.

    ``box`` is ``(x, y, w, h)`` at ``from_mpp``; the result is ``(x, y, w, h)`` at ``to_mpp`` with the start
    floored and the end ceiled. ``clip_to=(width, height)`` clips it to a frame of that size (the result may
    then have zero width or height when the box lies outside).
    """
    s = scale(from_mpp, to_mpp)
    x, y, w, h = box
    x0, y0 = math.floor(x * s + 1e-9), math.floor(y * s + 1e-9)
    x1, y1 = math.ceil((x + w) * s - 1e-9), math.ceil((y + h) * s - 1e-9)
    if clip_to is not None:
        cw, ch = clip_to
        x0, y0 = min(max(x0, 0), cw), min(max(y0, 0), ch)
        x1, y1 = min(max(x1, x0), cw), min(max(y1, y0), ch)
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


def model_box_to_thumb(
    model_box: Box, mpp: float, thumb_mpp: float, thumb_shape: tuple[int, int] | None = None
) -> Box:
    """Model-frame box -> the thumbnail box that covers it, clipped to ``thumb_shape=(thumb_h, thumb_w)``
    (numpy order, as ``mask.shape``) when given."""
    clip = None if thumb_shape is None else (thumb_shape[1], thumb_shape[0])
    return map_box(model_box, mpp, thumb_mpp, clip)


def model_box_to_l0(model_box: Box, mpp: float, l0_mpp: float) -> Box:
    """Model-frame box -> the level-0 box that covers it."""
    return map_box(model_box, mpp, l0_mpp)


def l0_box_to_model(l0_box: Box, l0_mpp: float, mpp: float) -> Box:
    """Level-0 box -> the model-frame box that covers it."""
    return map_box(l0_box, l0_mpp, mpp)


def level_for_mpp(downsamples: Sequence[float], l0_mpp: float, mpp: float, rtol: float = 1e-3) -> int:
    """Index of the coarsest pyramid level whose pixel size is finer than or equal to ``mpp``.

    ``downsamples`` are level-0 px per level px, finest first (level 0 = 1). A level within ``rtol`` of the
    target counts as equal (so a 0.5 um/px target uses a 0.5003 um/px level without resampling noise).
    Targets finer than level 0 use level 0 (upsampled).
    """
    best = 0
    for k, ds in enumerate(downsamples):
        if l0_mpp * ds <= mpp * (1 + rtol) and ds >= downsamples[best]:
            best = k
    return best
