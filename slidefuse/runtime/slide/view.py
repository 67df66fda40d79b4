"""``ScaledView``: a slide resampled to a pixel size (the model frame), read tile by tile from many threads."""

from __future__ import annotations

import contextlib
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyvips

from slidefuse.errors import SlideReadError, one_line
from slidefuse.runtime import coords, interrupt
from slidefuse.runtime.slide import decode

WHITE = 255
BAND_SOURCE_PIXELS = 16_000_000  # source pixels decoded between two checks for Ctrl-C in `read_all`


class ScaledView:
    """The slide resampled to ``mpp`` microns per pixel (the model frame). Cheap to create, lazy to read.

    ``width``/``height`` are ``round(l0_size * l0_mpp / mpp)``. ``read`` returns uint8 RGB ``[h, w, 3]``,
    0..255, and pads any part of the box outside the slide with white (255). Safe to call from many threads.
    """

    def __init__(self, image: pyvips.Image, mpp: float, path: Path, level: int, level_mpp: float, *,
                 source: Any = None) -> None:
        self.image = image  # uchar, 3 bands, exactly width x height
        self.mpp = mpp  # microns per pixel of this view
        self.width: int = image.width
        self.height: int = image.height
        self.level = level  # pyramid level the view resamples from
        self.level_mpp = level_mpp  # pixel size of that level
        self._path = path
        self._source = source  # the SlideReader whose decode log this view's reads report to (None: none)
        self._local = threading.local()
        self._pixels: np.ndarray | None = None  # whole view in memory, once preload() decided so

    def preload(self, max_pixels: int) -> bool:
        """Decode the whole view into memory when it has at most ``max_pixels`` pixels; later reads slice it.

        Small slides (or coarse model resolutions) are then decoded and resampled once instead of once per
        overlapping tile read, which dominates their run time. Memory: 3 bytes per pixel, so bounded by
        ``3 * max_pixels``. Returns True when the view was loaded.
        """
        if self._pixels is not None:
            return True
        if self.width * self.height > max_pixels:
            return False
        self._pixels = self._fetch(0, 0, self.width, self.height).copy()
        return True

    def _region(self) -> pyvips.Region:
        region = getattr(self._local, "region", None)
        if region is None:
            region = pyvips.Region.new(self.image)
            self._local.region = region
        return region

    def read(self, model_x: int, model_y: int, w: int, h: int) -> np.ndarray:
        """Pixels of the model-frame box ``(model_x, model_y, w, h)``: uint8 ``[h, w, 3]`` RGB, 0..255.

        The box may extend past any edge (or lie wholly outside): those pixels are white (255).
        """
        if w <= 0 or h <= 0:
            raise ValueError(f"read size must be positive, got {w} x {h}")
        x0, y0 = max(model_x, 0), max(model_y, 0)
        x1, y1 = min(model_x + w, self.width), min(model_y + h, self.height)
        if x0 == model_x and y0 == model_y and x1 - x0 == w and y1 - y0 == h:
            return self._fetch(x0, y0, w, h)
        out = np.full((h, w, 3), WHITE, dtype=np.uint8)
        if x1 > x0 and y1 > y0:
            out[y0 - model_y : y1 - model_y, x0 - model_x : x1 - model_x] = self._fetch(x0, y0, x1 - x0, y1 - y0)
        return out

    def _fetch(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        if self._pixels is not None:
            return self._pixels[y : y + h, x : x + w]
        try:
            with self._watch(x, y, w, h):
                data = self._region().fetch(x, y, w, h)
        except pyvips.Error as exc:
            raise SlideReadError(
                f"{self._path}: cannot read pixels at ({x}, {y}, {w} x {h}) at {self.mpp:g} um/px "
                f"({one_line(exc)}); the file is truncated or corrupt: re-copy or re-export it"
            ) from exc
        return np.frombuffer(data, dtype=np.uint8).reshape(h, w, 3)

    def _watch(self, x: int, y: int, w: int, h: int) -> contextlib.AbstractContextManager[None]:
        """`decode.watch` over the level box that the model-frame box (x, y, w, h) resamples (a margin of the
        resampling kernel's reach around it)."""
        if self._source is None:
            return contextlib.nullcontext()
        s = self.mpp / self.level_mpp if self.level_mpp > 0 else 1.0
        m = 3 * max(s, 1.0) + 1
        x0, y0 = max(0, int(x * s - m)), max(0, int(y * s - m))
        x1, y1 = int(math.ceil((x + w) * s + m)), int(math.ceil((y + h) * s + m))
        return decode.watch(self._source, self.level, (x0, y0, x1 - x0, y1 - y0))

    def read_all(self) -> np.ndarray:
        """The whole view as uint8 ``[height, width, 3]`` (only for small views: thumbnails, tests).

        Read in bands of rows that each decode about BAND_SOURCE_PIXELS of the source level, with a check for
        Ctrl-C between bands, so a view resampled from a huge single-level file stays interruptible."""
        if self._pixels is not None:
            return self._pixels
        src_per_row = self.source_pixels() / max(self.height, 1)
        rows = max(1, min(self.height, int(BAND_SOURCE_PIXELS / max(src_per_row, 1.0))))
        if rows >= self.height:
            return self.read(0, 0, self.width, self.height)
        out = np.empty((self.height, self.width, 3), dtype=np.uint8)
        for y in range(0, self.height, rows):
            interrupt.check()
            h = min(rows, self.height - y)
            out[y : y + h] = self._fetch(0, y, self.width, h)
        return out

    def source_pixels(self) -> int:
        """Pixels of the pyramid level this view resamples from (what reading all of it decodes)."""
        scale = self.mpp / self.level_mpp if self.level_mpp > 0 else 1.0
        return int(round(self.width * scale) * round(self.height * scale))

    def read_many(self, model_boxes: list[coords.Box]) -> list[np.ndarray]:
        """Read several model-frame boxes ``(x, y, w, h)`` in this thread; one array per box as ``read``.

        When the boxes are neighbours on one row (a band of overlapping tiles), one ``read`` of their
        bounding box sliced into tiles decodes each source tile once instead of up to four times; this method
        does that when the bounding box is no more than twice the boxes' total area.
        """
        if not model_boxes:
            return []
        bx0 = min(b[0] for b in model_boxes)
        by0 = min(b[1] for b in model_boxes)
        bx1 = max(b[0] + b[2] for b in model_boxes)
        by1 = max(b[1] + b[3] for b in model_boxes)
        total = sum(b[2] * b[3] for b in model_boxes)
        if (bx1 - bx0) * (by1 - by0) <= 2 * total:
            band = self.read(bx0, by0, bx1 - bx0, by1 - by0)
            return [band[y - by0 : y - by0 + h, x - bx0 : x - bx0 + w] for x, y, w, h in model_boxes]
        return [self.read(*b) for b in model_boxes]
