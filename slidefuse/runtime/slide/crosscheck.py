"""Cross-reader colour check: slidefuse's pixels against independent decoders, region by region.

For random regions at level 0 and at a reduced level, the pixels slidefuse gives the model (the level as
``SlideReader.level_rgb`` returns it, which every ``ScaledView`` resamples from) are compared with what
tifffile + imagecodecs decode (TIFF, OME-TIFF and TIFF-based vendor files) and what openslide-python returns
(OpenSlide formats). JPEG decoders round differently, so a reader agrees when the mean absolute difference is
<= 1.5 grey levels and the 99th percentile <= 8. OpenSlide trusts the TIFF photometric tag as libtiff does, so
on a level where slidefuse converts mislabelled YCbCr, openslide-python is not asked (it returns the same raw
values that slidefuse corrects); tifffile decides there. libvips reads an OpenSlide level whose downsample is
not an integer (e.g. 2.0005) tile by tile through level-0 coordinates, which OpenSlide renders with a growing
sub-pixel shift; on such a level the check compares 32x32 block means, which a shift of under a pixel barely
moves and a colour error moves a lot. Those decoders live in the ``colour`` extra; they are never needed to
segment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slidefuse.errors import require
from slidefuse.runtime.slide.reader import SlideReader

log = logging.getLogger(__name__)

MAX_MEAN_DIFF = 1.5  # grey levels
MAX_P99_DIFF = 8.0  # grey levels
Decoder = Callable[[int, int, int, int, int, int], "np.ndarray | None"]  # (level, x, y, w, h, lw) -> RGB


@dataclass(frozen=True)
class ColourCheck:
    """One independent decoder's verdict on one region of one level."""

    decoder: str  # "tifffile" or "openslide-python"
    level: int  # pyramid level, 0 = full resolution
    box: tuple[int, int, int, int]  # (x, y, w, h) in that level's pixels
    method: str  # "pixels", or "32x32 block means" on a level read with a sub-pixel shift (see module doc)
    mean_abs_diff: float  # grey levels, over every pixel (or block) and channel
    p99_abs_diff: float  # grey levels
    agrees: bool  # both within MAX_MEAN_DIFF and MAX_P99_DIFF


def _flatten_rgb(a: np.ndarray) -> np.ndarray:
    """uint8/uint16 [h, w] or [h, w, 3|4] -> uint8 [h, w, 3]: 16 bits shifted, alpha onto white, grey tripled."""
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] in (2, 4):
        alpha = a[:, :, -1:].astype(np.float64) / 255.0
        a = np.rint(a[:, :, :-1] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3])


def _tifffile_decoder(path: Path) -> Decoder | None:
    tifffile = require("tifffile", "colour", "the colour check")
    require("imagecodecs", "colour", "the colour check")
    try:
        tif = tifffile.TiffFile(str(path))
    except Exception as exc:
        log.info("%s: tifffile cannot read it (%s)", path, exc)
        return None
    cache: dict[tuple[int, int], np.ndarray] = {}

    def level_array(w: int, h: int) -> np.ndarray | None:
        if (w, h) not in cache:
            pages = [lv for s in tif.series for lv in s.levels] + list(tif.pages)
            match = next((p for p in pages if tuple(p.shape[:2]) == (h, w)), None)
            if match is None:
                return None
            arr = match.asarray()
            if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):  # planar
                arr = np.moveaxis(arr, 0, -1)
            page = getattr(match, "keyframe", match)  # a series level describes itself through its first page
            if getattr(page, "photometric", None) == 3:  # palette: indices -> colours (16-bit colormap)
                cmap = (np.asarray(page.colormap) >> 8).astype(np.uint8).T
                arr = cmap[arr]
            cache[(w, h)] = _flatten_rgb(arr)
        return cache[(w, h)]

    def decode(level: int, x: int, y: int, w: int, h: int, lw: int, lh: int = 0) -> np.ndarray | None:
        arr = level_array(lw, lh)
        return None if arr is None else arr[y : y + h, x : x + w]

    return decode  # type: ignore[return-value]


def _openslide_decoder(path: Path) -> Decoder | None:
    openslide = require("openslide", "colour", "the colour check")
    try:
        osr = openslide.OpenSlide(str(path))
    except Exception as exc:
        log.info("%s: openslide-python cannot read it (%s)", path, exc)
        return None

    def decode(level: int, x: int, y: int, w: int, h: int, lw: int, lh: int = 0) -> np.ndarray:
        ds = osr.level_downsamples[level]
        region = osr.read_region((int(round(x * ds)), int(round(y * ds))), level, (w, h))
        return _flatten_rgb(np.asarray(region.convert("RGBA")))

    return decode  # type: ignore[return-value]


def _boxes(width: int, height: int, regions: int, size: int,
           rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    w, h = min(size, width), min(size, height)
    return [(int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h) for _ in range(regions)]


def _block_means(a: np.ndarray, n: int = 32) -> np.ndarray:
    h, w = a.shape[0] // n * n, a.shape[1] // n * n
    return a[:h, :w].reshape(h // n, n, w // n, n, -1).mean(axis=(1, 3))


def _level_steps(slide: SlideReader, level: int) -> tuple[str, ...]:
    conversions = slide.info.colour.conversions if slide.info.colour else ()
    prefix = f"level {level}: "
    if any(c.startswith("level ") for c in conversions):
        return tuple(c[len(prefix):] for c in conversions if c.startswith(prefix))
    return conversions


def check_colours(slide: SlideReader, regions: int = 4, size: int = 256, seed: int = 0) -> list[ColourCheck]:
    """Compare ``slide``'s pixels with every independent decoder that reads it, at level 0 and the next level.

    Returns one ``ColourCheck`` per decoder, level and region; an empty list when no independent decoder
    reads the file. Needs the ``colour`` extra (tifffile, imagecodecs, openslide-python).
    """
    info = slide.info
    decoders: dict[str, Decoder] = {}
    if info.loader in ("tiffload", "openslideload"):
        dec = _tifffile_decoder(info.path)
        if dec is not None:
            decoders["tifffile"] = dec
    if info.loader == "openslideload":
        dec = _openslide_decoder(info.path)
        if dec is not None:
            decoders["openslide-python"] = dec
    rng = np.random.default_rng(seed)
    out: list[ColourCheck] = []
    for k in sorted({0, min(1, len(info.levels) - 1)}):
        lv = info.levels[k]
        image = slide.level_rgb(k)
        converted = "jfif-ycbcr-to-rgb" in _level_steps(slide, k)
        for box in _boxes(lv.width, lv.height, regions, size, rng):
            x, y, w, h = box
            ours = image.crop(x, y, w, h).numpy().astype(np.int16)
            for name, decode in decoders.items():
                if name == "openslide-python" and converted:
                    continue
                theirs = decode(k, *box, lv.width, lv.height)  # type: ignore[call-arg]
                if theirs is None or theirs.shape != ours.shape:
                    continue
                a, b = ours, theirs.astype(np.int16)
                method = "pixels"
                if info.loader == "openslideload" and abs(lv.downsample - round(lv.downsample)) > 1e-6:
                    a, b, method = _block_means(a), _block_means(b), "32x32 block means"
                diff = np.abs(a - b)
                mean, p99 = float(diff.mean()), float(np.percentile(diff, 99))
                out.append(ColourCheck(name, k, box, method, mean, p99, mean <= MAX_MEAN_DIFF and p99 <= MAX_P99_DIFF))
    return out
