"""Slide readers over pyvips: one interface for vendor slides, TIFF / OME-TIFF, and in-memory images.

``open_slide(path, mpp=None)`` picks libvips' OpenSlide loader for vendor formats (SVS, NDPI, MRXS, SCN, ...)
and its TIFF loader for plain / pyramidal TIFF and OME-TIFF. The pixel size comes from OpenSlide's
properties, then the TIFF resolution tags, then the OME-XML, in that order; ``mpp=`` overrides all of them;
a slide with none is refused (``MissingPixelSize``).

``SlideReader.scaled(mpp)`` is the slide resampled to ``mpp`` microns per pixel (the *model* frame, see
``coords``): a lazy libvips pipeline from the pyramid level just finer than the target, so reading a tile
costs decoding the few source tiles under it, whatever the slide size. ``ScaledView.read`` is thread-safe
(libvips releases the GIL; each thread fetches through its own ``pyvips.Region``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyvips

from slidefuse.errors import MissingPixelSize, SlideNotFound, SlideReadError
from slidefuse.runtime import coords
from slidefuse.runtime.types import LevelInfo, SlideInfo

log = logging.getLogger(__name__)

# Pixel sizes outside this range (um/px) are metadata placeholders (72 dpi, 1 px/mm, ...), not real ones.
PLAUSIBLE_MPP = (0.05, 100.0)
# File suffixes that only OpenSlide reads: when OpenSlide refuses one, the file is broken, not "a TIFF".
VENDOR_SUFFIXES = {".svs", ".ndpi", ".vms", ".vmu", ".mrxs", ".scn", ".bif", ".svslide"}
# Raw properties copied into SlideInfo.properties (when present) for reports.
REPORT_PROPERTIES = (
    "openslide.vendor",
    "openslide.mpp-x",
    "openslide.mpp-y",
    "openslide.objective-power",
    "openslide.quickhash-1",
    "aperio.AppMag",
    "aperio.MPP",
    "aperio.ScanScope ID",
    "aperio.Date",
    "hamamatsu.SourceLens",
    "tiff.Make",
    "tiff.Model",
    "tiff.Software",
    "tiff.ResolutionUnit",
    "resolution-unit",
)
WHITE = 255
# A pyramid level this small (px) is decoded into memory once, the first time a view needs it, and shared by
# every view of that level: a small slide's thumbnail and model-resolution view then cost one decode, not two.
SMALL_LEVEL_PIXELS = 16_000_000


def _field(image: pyvips.Image, name: str) -> Any:
    """A metadata field of ``image``, or None when absent."""
    return image.get(name) if image.get_typeof(name) != 0 else None


def _plausible(mpp: float | None, what: str, path: Path) -> float | None:
    if mpp is None or not math.isfinite(mpp):
        return None
    lo, hi = PLAUSIBLE_MPP
    if not lo <= mpp <= hi:
        log.debug("%s: ignoring %s pixel size %.6g um/px (outside %g..%g um/px: a placeholder)", path, what, mpp, lo, hi)
        return None
    return mpp


# ---------------------------------------------------------------------------------------------- pixel size


def _mpp_from_openslide(image: pyvips.Image, path: Path) -> float | None:
    v = _field(image, "openslide.mpp-x")
    try:
        return _plausible(float(v), "openslide.mpp-x", path) if v not in (None, "") else None
    except ValueError:
        log.debug("%s: unparseable openslide.mpp-x %r", path, v)
        return None


def _mpp_from_resolution(res: float | None, unit: str | None, path: Path, what: str) -> float | None:
    """Pixel size from a TIFF resolution (px per ``unit``); None for absent units and print placeholders."""
    if res is None or res <= 0 or unit is None:
        return None
    unit = unit.lower()
    if unit in ("cm", "centimeter", "centimetre", "3"):
        per_mm = res / 10.0
    elif unit in ("in", "inch", "2"):
        if res <= 1200.5 and abs(res - round(res)) < 0.01:  # 72, 96, 300, 600 dpi: a print placeholder
            log.debug("%s: ignoring %s of %g dpi (a print placeholder, not a scan pixel size)", path, what, res)
            return None
        per_mm = res / 25.4
    elif unit == "mm":  # already px/mm (libvips' own xres)
        per_mm = res
    else:
        log.debug("%s: ignoring %s with resolution unit %r", path, what, unit)
        return None
    return _plausible(1000.0 / per_mm, what, path)


def _mpp_from_tiff_tags(image: pyvips.Image, loader: str, path: Path) -> float | None:
    if loader == "openslideload":  # OpenSlide exposes the raw tags as properties
        res, unit = _field(image, "tiff.XResolution"), _field(image, "tiff.ResolutionUnit")
        try:
            res_f = float(res) if res not in (None, "") else None
        except ValueError:
            return None
        return _mpp_from_resolution(res_f, unit, path, "tiff.XResolution")
    unit = _field(image, "resolution-unit")
    if unit is None:
        return None
    # libvips reports xres in px/mm whatever the file's unit; undo that to judge placeholders in dpi.
    raw = image.xres * (25.4 if unit == "in" else 10.0)
    return _mpp_from_resolution(raw, unit, path, "TIFF XResolution")


_OME_UNITS = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4, "pm": 1e-6}


def _ome_root(description: str | None) -> ET.Element | None:
    if not description or "<OME" not in description:
        return None
    try:
        return ET.fromstring(description.encode("utf-8"))
    except ET.ParseError:
        return None


def _mpp_from_ome(root: ET.Element | None, path: Path) -> float | None:
    if root is None:
        return None
    for el in root.iter():
        if el.tag.endswith("}Pixels") or el.tag == "Pixels":
            size, unit = el.get("PhysicalSizeX"), el.get("PhysicalSizeXUnit", "µm")
            if size is None:
                return None
            factor = _OME_UNITS.get(unit)
            if factor is None:
                log.debug("%s: unknown OME PhysicalSizeXUnit %r", path, unit)
                return None
            try:
                return _plausible(float(size) * factor, "OME PhysicalSizeX", path)
            except ValueError:
                return None
    return None


def _ome_objective(root: ET.Element | None) -> float | None:
    if root is None:
        return None
    for el in root.iter():
        if el.tag.endswith("}Objective") and el.get("NominalMagnification"):
            try:
                return float(el.get("NominalMagnification", ""))
            except ValueError:
                return None
    return None


# ------------------------------------------------------------------------------------------ image plumbing


def to_rgb_uint8(image: pyvips.Image) -> pyvips.Image:
    """Any libvips image -> 3-band uchar sRGB: alpha flattened onto white, grey replicated, 16-bit scaled."""
    if image.interpretation in ("rgb16", "grey16"):
        image = image.colourspace("srgb" if image.interpretation == "rgb16" else "b-w")
    if image.hasalpha():
        image = image.flatten(background=[WHITE] * (image.bands - 1))
    if image.bands == 1:
        image = image.bandjoin([image, image])
    elif image.bands > 3:
        image = image.extract_band(0, n=3)
    if image.format != "uchar":
        image = image.cast("uchar")
    return image


class ScaledView:
    """The slide resampled to ``mpp`` microns per pixel (the model frame). Cheap to create, lazy to read.

    ``width``/``height`` are ``round(l0_size * l0_mpp / mpp)``. ``read`` returns uint8 RGB ``[h, w, 3]``,
    0..255, and pads any part of the box outside the slide with white (255). Safe to call from many threads.
    """

    def __init__(self, image: pyvips.Image, mpp: float, path: Path, level: int, level_mpp: float) -> None:
        self.image = image  # uchar, 3 bands, exactly width x height
        self.mpp = mpp  # microns per pixel of this view
        self.width: int = image.width
        self.height: int = image.height
        self.level = level  # pyramid level the view resamples from
        self.level_mpp = level_mpp  # pixel size of that level
        self._path = path
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
            data = self._region().fetch(x, y, w, h)
        except pyvips.Error as exc:
            msg = " ".join(str(exc).split())
            raise SlideReadError(
                f"{self._path}: cannot read pixels at ({x}, {y}, {w} x {h}) at {self.mpp:g} um/px ({msg}); "
                "the file is truncated or corrupt: re-copy or re-export it"
            ) from exc
        return np.frombuffer(data, dtype=np.uint8).reshape(h, w, 3)

    def read_all(self) -> np.ndarray:
        """The whole view as uint8 ``[height, width, 3]`` (only for small views: thumbnails, tests)."""
        return self.read(0, 0, self.width, self.height)

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


class SlideReader:
    """A whole-slide image opened with pyvips. Use ``open_slide``; a context manager.

    ``info`` describes the slide (level-0 size, pixel size and its source, levels finest first, vendor,
    loader); ``scaled(mpp)`` reads it at any pixel size; ``thumbnail(max_side)`` gives a small RGB overview.
    """

    def __init__(self, info: SlideInfo, level_images: list[pyvips.Image] | None = None) -> None:
        self.info = info
        self._level_images = level_images  # lazily-loaded level images (None: load via _load_level)
        self._cache: dict[float, ScaledView] = {}
        self._small_levels: dict[int, pyvips.Image] = {}  # decoded small levels (RGB uint8), see SMALL_LEVEL_PIXELS
        self._lock = threading.Lock()

    # subclasses override
    def _load_level(self, level: int) -> pyvips.Image:
        if self._level_images is None:
            raise NotImplementedError
        return self._level_images[level]

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Drop cached views (libvips closes the file when the last image referring to it is freed)."""
        self._cache.clear()
        self._small_levels.clear()

    @property
    def mpp(self) -> float:
        """Microns per level-0 pixel in use."""
        return self.info.mpp

    def model_size(self, mpp: float) -> tuple[int, int]:
        """(width, height) in px of the slide at ``mpp`` (same rule as ``scaled(mpp)``)."""
        return coords.model_size(self.info.width, self.info.height, self.info.mpp, mpp)

    def scaled(self, mpp: float) -> ScaledView:
        """The slide resampled to ``mpp`` microns per pixel, from the level just finer than (or equal to) it."""
        if not (mpp > 0 and math.isfinite(mpp)):
            raise ValueError(f"mpp must be a positive number of microns per pixel, got {mpp}")
        with self._lock:
            view = self._cache.get(mpp)
            if view is None:
                view = self._make_view(mpp)
                self._cache[mpp] = view
        return view

    def _make_view(self, mpp: float) -> ScaledView:
        i = self.info
        downsamples = [lv.downsample for lv in i.levels]
        k = coords.level_for_mpp(downsamples, i.mpp, mpp)
        level = i.levels[k]
        out_w, out_h = self.model_size(mpp)
        image = self._rgb_level(k)
        hscale, vscale = out_w / level.width, out_h / level.height
        if abs(hscale - 1) > 1e-9 or abs(vscale - 1) > 1e-9:
            image = image.resize(hscale, vscale=vscale)
        if image.width != out_w or image.height != out_h:  # rounding in resize: pin the exact size
            image = image.embed(0, 0, out_w, out_h, extend="white")
        log.debug(
            "%s: view at %g um/px = level %d (%g um/px, %dx%d) resized by %.4f -> %dx%d",
            i.path, mpp, k, i.mpp * level.downsample, level.width, level.height, hscale, out_w, out_h,
        )
        return ScaledView(image, mpp, i.path, k, i.mpp * level.downsample)

    def _rgb_level(self, k: int) -> pyvips.Image:
        """Level ``k`` as lazy RGB uint8; a small level is decoded into memory once and shared (call with
        ``self._lock`` held)."""
        image = self._small_levels.get(k)
        if image is not None:
            return image
        image = to_rgb_uint8(self._load_level(k))
        level = self.info.levels[k]
        if level.width * level.height <= SMALL_LEVEL_PIXELS:
            try:
                image = image.copy_memory()
            except pyvips.Error as exc:
                raise SlideReadError(
                    f"{self.info.path}: cannot decode pyramid level {k} ({' '.join(str(exc).split())}); "
                    "the file is truncated or corrupt: re-copy or re-export it"
                ) from exc
            self._small_levels[k] = image
        return image

    def thumbnail_mpp(self, max_side: int = 1024) -> float:
        """Pixel size (um/px) of ``thumbnail(max_side)``."""
        return coords.thumb_mpp_for(self.info.width, self.info.height, self.info.mpp, max_side)

    def thumbnail_at(self, mpp: float) -> np.ndarray:
        """The whole slide at ``mpp`` um/px: uint8 ``[h, w, 3]`` RGB (thumb frame; from the coarsest level
        finer than ``mpp``, so keep ``mpp`` coarse enough for the result to fit in memory)."""
        return self.scaled(mpp).read_all()

    def thumbnail(self, max_side: int = 1024) -> np.ndarray:
        """A thumbnail whose longer side is ``max_side`` px (or the slide itself if smaller): uint8
        ``[h, w, 3]`` RGB at ``thumbnail_mpp(max_side)`` um/px (thumb frame)."""
        return self.thumbnail_at(self.thumbnail_mpp(max_side))


class _VipsFileSlide(SlideReader):
    """A slide file read through libvips' openslideload or tiffload."""

    def __init__(self, info: SlideInfo, level_args: list[dict[str, Any]], fail_on: bool) -> None:
        super().__init__(info)
        self._level_args = level_args
        self._fail_on = fail_on

    def _load_level(self, level: int) -> pyvips.Image:
        path = str(self.info.path)
        try:
            if self.info.loader == "openslideload":
                return pyvips.Image.openslideload(path, **self._level_args[level])
            kw = dict(self._level_args[level])
            if self._fail_on:
                kw["fail_on"] = "error"
            return pyvips.Image.tiffload(path, **kw)
        except pyvips.Error as exc:
            raise SlideReadError(
                f"{path}: cannot open pyramid level {level} ({' '.join(str(exc).split())}); "
                "the file is truncated or corrupt: re-copy or re-export it"
            ) from exc


class InMemorySlide(SlideReader):
    """A slide held in memory: uint8 ``[H, W, 3]`` RGB at ``mpp`` um/px, one level. For tests and small images."""

    def __init__(self, array: np.ndarray, mpp: float, name: str = "in-memory") -> None:
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(f"InMemorySlide needs uint8 [H, W, 3] RGB, got {array.dtype} {list(array.shape)}")
        if not (mpp > 0 and math.isfinite(mpp)):
            raise ValueError(f"mpp must be a positive number of microns per pixel, got {mpp}")
        self.array = np.ascontiguousarray(array)
        h, w = self.array.shape[:2]
        image = pyvips.Image.new_from_array(self.array, interpretation="srgb")
        info = SlideInfo(
            path=Path(name),
            width=w,
            height=h,
            mpp=float(mpp),
            mpp_source="user",
            vendor="memory",
            loader="memory",
            levels=(LevelInfo(w, h, 1.0),),
        )
        super().__init__(info, [image])


# ------------------------------------------------------------------------------------------------ opening


def _openslide_image(path: Path) -> pyvips.Image | None:
    """Level 0 through OpenSlide, or None when OpenSlide cannot read the file (or calls it a generic TIFF)."""
    try:
        image = pyvips.Image.openslideload(str(path))
    except pyvips.Error as exc:
        log.debug("%s: openslideload refused it: %s", path, " ".join(str(exc).split()))
        return None
    if _field(image, "openslide.vendor") == "generic-tiff":
        return None  # plain tiled TIFF: the TIFF loader reads it, with its resolution tags
    return image


def _openslide_info(path: Path, image: pyvips.Image) -> tuple[SlideInfo, list[dict[str, Any]]]:
    count = int(_field(image, "openslide.level-count") or 1)
    levels = []
    for k in range(count):
        w = int(_field(image, f"openslide.level[{k}].width"))
        h = int(_field(image, f"openslide.level[{k}].height"))
        ds = float(_field(image, f"openslide.level[{k}].downsample"))
        levels.append(LevelInfo(w, h, ds))
    objective = _field(image, "openslide.objective-power")
    try:
        objective_f = float(objective) if objective not in (None, "") else None
    except ValueError:
        objective_f = None
    mpp, source = _mpp_from_openslide(image, path), "openslide"
    if mpp is None:
        mpp, source = _mpp_from_tiff_tags(image, "openslideload", path), "tiff"
    info = SlideInfo(
        path=path,
        width=image.width,
        height=image.height,
        mpp=mpp or 0.0,
        mpp_source=source if mpp else "none",
        vendor=str(_field(image, "openslide.vendor") or "openslide"),
        loader="openslideload",
        levels=tuple(levels),
        objective_power=objective_f,
        properties=_report_properties(image),
    )
    return info, [{"level": k} for k in range(count)]


def _tiff_levels(path: Path, first: pyvips.Image) -> tuple[list[LevelInfo], list[dict[str, Any]]]:
    """Pyramid levels of a TIFF: sub-IFDs (OME-TIFF style) if any, else following pages that halve in size."""
    w0, h0 = first.width, first.height
    levels, args = [LevelInfo(w0, h0, 1.0)], [{"page": 0}]
    n_sub = int(_field(first, "n-subifds") or 0)
    n_pages = int(_field(first, "n-pages") or 1)
    candidates = [{"subifd": i} for i in range(n_sub)] if n_sub else [{"page": i} for i in range(1, n_pages)]
    for kw in candidates:
        try:
            im = pyvips.Image.tiffload(str(path), **kw)
        except pyvips.Error:
            break
        prev = levels[-1]
        same_aspect = abs(im.width / w0 - im.height / h0) <= 2.0 / min(im.width, im.height)
        if not (im.width < prev.width and im.height < prev.height and same_aspect and im.bands == first.bands):
            break  # a label or macro image, not a pyramid level
        levels.append(LevelInfo(im.width, im.height, w0 / im.width))
        args.append(kw)
    return levels, args


def _tiff_info(path: Path, image: pyvips.Image) -> tuple[SlideInfo, list[dict[str, Any]]]:
    levels, args = _tiff_levels(path, image)
    root = _ome_root(_field(image, "image-description"))
    mpp, source = _mpp_from_tiff_tags(image, "tiffload", path), "tiff"
    if mpp is None:
        mpp, source = _mpp_from_ome(root, path), "ome"
    info = SlideInfo(
        path=path,
        width=image.width,
        height=image.height,
        mpp=mpp or 0.0,
        mpp_source=source if mpp else "none",
        vendor="ome-tiff" if root is not None else "tiff",
        loader="tiffload",
        levels=tuple(levels),
        objective_power=_ome_objective(root),
        properties=_report_properties(image),
    )
    return info, args


def _report_properties(image: pyvips.Image) -> dict[str, str]:
    return {k: str(v) for k in REPORT_PROPERTIES if (v := _field(image, k)) not in (None, "")}


def open_slide(path: str | os.PathLike[str], mpp: float | None = None) -> SlideReader:
    """Open a whole-slide image. ``mpp`` (microns per level-0 pixel) overrides the file's pixel size.

    Raises ``SlideNotFound`` (no such file), ``SlideReadError`` (not a slide, or corrupt) and
    ``MissingPixelSize`` (the file has no usable pixel size and ``mpp`` is None).
    """
    p = Path(path)
    if not p.exists():
        raise SlideNotFound(f"{p}: no such slide file; check the path")
    if p.is_dir():
        raise SlideReadError(f"{p}: is a folder, not a slide file; pass the slide file itself")
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise MissingPixelSize(f"{p}: --mpp must be a positive number of microns per pixel, got {mpp}")

    image = _openslide_image(p)
    if image is not None:
        info, level_args = _openslide_info(p, image)
    elif p.suffix.lower() in VENDOR_SUFFIXES:
        raise SlideReadError(
            f"{p}: OpenSlide cannot read this {p.suffix} file (truncated, corrupt or not a slide); "
            "re-copy it from the scanner or pass a valid slide"
        )
    else:
        try:
            image = pyvips.Image.tiffload(str(p))
        except pyvips.Error as exc:
            first = next((ln for ln in str(exc).splitlines()[1:] if ln.strip()), "unknown format")
            raise SlideReadError(
                f"{p}: not a slide that OpenSlide or the TIFF loader can read ({first.strip()}); "
                "pass an SVS/NDPI/MRXS/SCN slide or a (pyramidal) TIFF / OME-TIFF"
            ) from exc
        info, level_args = _tiff_info(p, image)

    if mpp is not None:
        if info.mpp:
            log.info("%s: using --mpp %g um/px instead of the file's %g (%s)", p, mpp, info.mpp, info.mpp_source)
        info = dataclasses.replace(info, mpp=float(mpp), mpp_source="user")
    elif not info.mpp:
        raise MissingPixelSize(
            f"{p}: the file has no pixel size (microns per pixel); pass --mpp MICRONS_PER_PIXEL "
            "(e.g. --mpp 0.25 for 40x, 0.5 for 20x)"
        )
    log.debug("%s: %s, %dx%d, %d levels, %g um/px from %s", p, info.loader, info.width, info.height,
              len(info.levels), info.mpp, info.mpp_source)
    reader = _VipsFileSlide(info, level_args, fail_on=info.loader == "tiffload")
    _probe(reader)
    return reader


def _probe(reader: SlideReader) -> None:
    """Decode one small corner of the coarsest level, so that a file whose pixels cannot be decoded at all is
    refused at open time with a clear message rather than mid-run."""
    i = reader.info
    k = len(i.levels) - 1
    lv = i.levels[k]
    image = to_rgb_uint8(reader._load_level(k))
    w, h = min(lv.width, 64), min(lv.height, 64)
    try:
        pyvips.Region.new(image).fetch(0, 0, w, h)
    except pyvips.Error as exc:
        raise SlideReadError(
            f"{i.path}: cannot decode its pixels ({' '.join(str(exc).split())}); "
            "the file is truncated or corrupt: re-copy or re-export it"
        ) from exc



