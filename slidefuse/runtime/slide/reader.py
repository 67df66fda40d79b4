"""Slide readers over pyvips: one interface for vendor slides, TIFF / OME-TIFF, and in-memory images.

``open_slide(path, mpp=None)`` picks libvips' OpenSlide loader for vendor formats (SVS, NDPI, MRXS, SCN, ...)
and its TIFF loader for plain / pyramidal TIFF and OME-TIFF. The pixel size comes from ``metadata``'s chain
of sources; ``mpp=`` replaces all of them, ``default_mpp=`` fills in a missing one only; a slide with none is
refused (``MissingPixelSize``). Pixels go
through ``colour`` (mislabelled YCbCr, alpha, grey, 16 bits, CMYK, optional ICC) on their way out.

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
import stat
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import numpy as np
import pyvips

from slidefuse.errors import InvalidPixelSize, MissingPixelSize, SlideNotFound, SlideReadError, one_line
from slidefuse.runtime import coords
from slidefuse.runtime.heap import drop_operation_cache
from slidefuse.runtime.slide import colour, decode, metadata, tiffdir
from slidefuse.runtime.slide.colour import ColourTransform, LevelColour
from slidefuse.runtime.slide.decode import DecodeLog, L0Box, LevelBox, OnDecodeError, SourceTile
from slidefuse.runtime.slide.view import ScaledView
from slidefuse.runtime.types import ColourPipeline, DecodeErrors, LevelInfo, SlideInfo

log = logging.getLogger(__name__)

# File suffixes that only OpenSlide reads: when OpenSlide refuses one, the file is broken, not "a TIFF".
VENDOR_SUFFIXES = {".svs", ".ndpi", ".vms", ".vmu", ".mrxs", ".scn", ".bif", ".svslide"}
# OpenSlide vendors whose tiles OpenSlide decodes through libtiff, trusting the TIFF photometric tag (so the
# mislabelled-YCbCr trap applies to them as to libvips' tiffload). Other vendors' JPEGs go straight to libjpeg.
TIFF_DECODED_VENDORS = {"aperio", "leica", "philips", "ventana", "trestle", "generic-tiff"}
# A pyramid level this small (px) is decoded into memory once, the first time a view needs it, and shared by
# every view of that level: a small slide's thumbnail and model-resolution view then cost one decode, not two.
SMALL_LEVEL_PIXELS = 16_000_000
# Bounds on what opening and planning a slide may decode (refused before any pixel is read, see
# `check_decode_bounds`): the pixels of one level a thumbnail decodes, and a TIFF stored in strips, which libvips
# decodes whole (into a temporary file the size of the image) before any random read.
MAX_DECODE_PIXELS = 30_000_000_000
MAX_STRIP_PIXELS = 500_000_000
# TIFF compressions whose tiles a decoder's report is traced to (`decode`): JPEG, and JPEG 2000 (Aperio 33003 /
# 33005, 34712); other codecs report nothing short of an error that fails the read.
TRACEABLE_COMPRESSIONS = (7, 33003, 33005, 34712)


def _corrupt(path: Path | str, what: str, exc: BaseException) -> SlideReadError:
    return SlideReadError(f"{path}: {what} ({one_line(exc)}); the file is truncated or corrupt: "
                          "re-copy or re-export it")


class SlideReader:
    """A whole-slide image opened with pyvips. Use ``open_slide``; a context manager.

    ``info`` describes the slide (level-0 size, pixel size and its source, levels finest first, vendor,
    loader, colour pipeline); ``scaled(mpp)`` reads it at any pixel size; ``thumbnail(max_side)`` gives a
    small RGB overview. Every pixel returned is uint8 sRGB as ``info.colour`` describes. ``decode_log``
    holds the tiles the decoders reported as corrupt while reading (``decode``); with its policy "fail" (the
    default) a read that meets one raises ``SlideDecodeError``.
    """

    def __init__(self, info: SlideInfo, level_images: list[pyvips.Image] | None = None) -> None:
        self.info = info
        self._level_images = level_images  # lazily-loaded level images (None: load via _load_level)
        self._cache: dict[float, ScaledView] = {}
        self._small_levels: dict[int, pyvips.Image] = {}  # decoded small levels (RGB uint8), see SMALL_LEVEL_PIXELS
        self._lock = threading.Lock()
        self.decode_log = DecodeLog(info.path)

    # subclasses override
    def _load_level(self, level: int) -> pyvips.Image:
        """Level ``level`` as the loader decodes it (before any colour conversion)."""
        if self._level_images is None:
            raise NotImplementedError
        return self._level_images[level]

    def _to_rgb(self, level: int, image: pyvips.Image) -> pyvips.Image:
        """A decoded level -> lazy 3-band uchar sRGB (subclasses add their colour pipeline)."""
        return colour.apply(image, LevelColour("", False, None), "none", self.info.path)[0]

    def _source_tiles(self, level: int, level_box: LevelBox) -> list[SourceTile] | None:
        """The stored tiles of ``level`` under ``level_box``, to trace a decoder's report to them; None when
        this reader cannot list them."""
        return None

    def _l0_box(self, level: int, level_box: LevelBox) -> L0Box:
        """A box of level ``level`` (level px) in level-0 px, clipped to the slide."""
        ds = self.info.levels[level].downsample
        x, y, w, h = level_box
        x0, y0 = max(0, int(x * ds)), max(0, int(y * ds))
        x1 = min(self.info.width, int(math.ceil((x + w) * ds)))
        y1 = min(self.info.height, int(math.ceil((y + h) * ds)))
        return x0, y0, max(0, x1 - x0), max(0, y1 - y0)

    def decode_errors(self) -> DecodeErrors:
        """What the decoders reported so far: count and the first bad tiles (level-0 boxes, messages)."""
        return self.decode_log.summary()

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
            raise InvalidPixelSize(f"mpp must be a positive number of microns per pixel, got {mpp}")
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
        return ScaledView(image, mpp, i.path, k, i.mpp * level.downsample, source=self)

    def _rgb_level(self, k: int) -> pyvips.Image:
        """Level ``k`` as lazy RGB uint8; a small level is decoded into memory once and shared (call with
        ``self._lock`` held)."""
        image = self._small_levels.get(k)
        if image is not None:
            return image
        image = self._to_rgb(k, self._load_level(k))
        level = self.info.levels[k]
        if level.width * level.height <= SMALL_LEVEL_PIXELS:
            try:
                with decode.watch(self, k, (0, 0, level.width, level.height)):
                    image = image.copy_memory()
            except pyvips.Error as exc:
                raise _corrupt(self.info.path, f"cannot decode pyramid level {k}", exc) from exc
            self._small_levels[k] = image
        return image

    def level_rgb(self, k: int) -> pyvips.Image:
        """Pyramid level ``k`` exactly as the model path sees it: lazy 3-band uchar sRGB (level frame)."""
        with self._lock:
            return self._rgb_level(k)

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
    """A slide file read through libvips' openslideload or tiffload, with its colour pipeline."""

    def __init__(self, info: SlideInfo, level_args: list[dict[str, Any]], fail_on: bool,
                 level_colours: list[LevelColour], transform: ColourTransform) -> None:
        super().__init__(info)
        self._level_args = level_args
        self._fail_on = fail_on
        self._level_colours = level_colours
        self._transform = transform
        self._layouts: dict[int, tiffdir.TileLayout | None] = {}  # per level, read when first traced
        self._tables: dict[int, bytes | None] = {}  # per level, its JPEGTables

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
            raise _corrupt(path, f"cannot open pyramid level {level}", exc) from exc

    def _to_rgb(self, level: int, image: pyvips.Image) -> pyvips.Image:
        return colour.apply(image, self._level_colours[level], self._transform, self.info.path)[0]

    def _source_tiles(self, level: int, level_box: LevelBox) -> list[SourceTile] | None:
        """The JPEG / JPEG 2000 tiles of a TIFF level under ``level_box`` (OpenSlide's vendors: None, since
        OpenSlide fails the read itself)."""
        if self.info.loader != "tiffload":
            return None
        if level not in self._layouts:
            lv = self.info.levels[level]
            d = colour.match_directory(tiffdir.read_directories(self.info.path), lv.width, lv.height)
            traceable = d is not None and d.compression in TRACEABLE_COMPRESSIONS
            layout = tiffdir.tile_layout(self.info.path, d) if d is not None and traceable else None
            tables = d.jpeg_tables if d is not None and d.compression == 7 else None
            self._layouts[level], self._tables[level] = layout, tables
        layout = self._layouts[level]
        if layout is None:
            return None
        return _tiles_under(self, level, level_box, layout, self._tables.get(level))

    def colour_pipeline(self) -> ColourPipeline:
        """What each level stores and which conversions the reader applies (for ``SlideInfo.colour``)."""
        # Levels stored alike convert alike: decode the header of one level per kind of storage, not of every
        # level (a 9-level pyramid would otherwise be opened a second time at every open_slide).
        by_kind: dict[tuple[str, bool, bool], tuple[str, ...]] = {}
        steps = []
        for k, lc in enumerate(self._level_colours):
            kind = (lc.stored, lc.ycbcr_as_rgb, lc.icc_profile is not None)
            if kind not in by_kind:
                by_kind[kind] = colour.apply(self._load_level(k), lc, self._transform, self.info.path)[1]
            steps.append(by_kind[kind])
        if all(s == steps[0] for s in steps):
            conversions = steps[0]
        else:
            conversions = tuple(f"level {k}: {step}" for k, s in enumerate(steps) for step in s)
        decoder = "openslide" if self.info.loader == "openslideload" else "libtiff"
        return colour.describe(decoder, self._level_colours, conversions, self._transform)


def _tiles_under(reader: SlideReader, level: int, level_box: LevelBox, layout: tiffdir.TileLayout,
                 tables: bytes | None) -> list[SourceTile]:
    lv = reader.info.levels[level]
    x, y, w, h = level_box
    tw, th = layout.tile_width, layout.tile_height
    out = []
    for row in range(max(0, y // th), min(-(-lv.height // th), -(-(y + h) // th))):
        for col in range(max(0, x // tw), min(layout.columns, -(-(x + w) // tw))):
            i = row * layout.columns + col
            if i >= len(layout.offsets) or i >= len(layout.counts):
                continue
            off, cnt = layout.offsets[i], layout.counts[i]

            def encoded(off: int = off, cnt: int = cnt) -> bytes | None:
                data = tiffdir.read_segment(reader.info.path, off, cnt)
                return decode.jpeg_with_tables(data, tables) if data is not None else None

            level_tile = (col * tw, row * th, min(tw, lv.width - col * tw), min(th, lv.height - row * th))
            box = reader._l0_box(level, level_tile)
            out.append(SourceTile((level, col, row), box, encoded))
    return out


class InMemorySlide(SlideReader):
    """A slide held in memory: uint8 ``[H, W, 3]`` RGB at ``mpp`` um/px, one level. For tests and small images."""

    def __init__(self, array: np.ndarray, mpp: float, name: str = "in-memory") -> None:
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(f"InMemorySlide needs uint8 [H, W, 3] RGB, got {array.dtype} {list(array.shape)}")
        if not (mpp > 0 and math.isfinite(mpp)):
            raise InvalidPixelSize(f"mpp must be a positive number of microns per pixel, got {mpp}")
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
            colour=ColourPipeline("memory", ("uint8 rgb array",), (), "no embedded profile"),
        )
        super().__init__(info, [image])


# ------------------------------------------------------------------------------------------------ opening


def _openslide_image(path: Path) -> pyvips.Image | None:
    """Level 0 through OpenSlide, or None when OpenSlide cannot read the file (or calls it a generic TIFF)."""
    try:
        image = pyvips.Image.openslideload(str(path))
    except pyvips.Error as exc:
        log.debug("%s: openslideload refused it: %s", path, one_line(exc))
        return None
    if metadata.field(image, "openslide.vendor") == "generic-tiff":
        return None  # plain tiled TIFF: the TIFF loader reads it, with its resolution tags
    return image


def _openslide_info(path: Path, image: pyvips.Image) -> tuple[SlideInfo, list[dict[str, Any]]]:
    f = metadata.field
    count = int(f(image, "openslide.level-count") or 1)
    levels = [LevelInfo(int(f(image, f"openslide.level[{k}].width")), int(f(image, f"openslide.level[{k}].height")),
                        float(f(image, f"openslide.level[{k}].downsample"))) for k in range(count)]
    ctx = metadata.MetadataContext(image, "openslideload", path, None)
    info = _slide_info(ctx, str(f(image, "openslide.vendor") or "openslide"), levels)
    return info, [{"level": k} for k in range(count)]


def _tiff_levels(path: Path, first: pyvips.Image) -> tuple[list[LevelInfo], list[dict[str, Any]]]:
    """Pyramid levels of a TIFF: sub-IFDs (OME-TIFF style) if any, else following pages that halve in size."""
    w0, h0 = first.width, first.height
    levels, args = [LevelInfo(w0, h0, 1.0)], [{"page": 0}]
    n_sub = int(metadata.field(first, "n-subifds") or 0)
    n_pages = int(metadata.field(first, "n-pages") or 1)
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
    root = metadata.ome_root(metadata.field(image, "image-description"))
    ctx = metadata.MetadataContext(image, "tiffload", path, root)
    return _slide_info(ctx, "ome-tiff" if root is not None else "tiff", levels), args


def _slide_info(ctx: metadata.MetadataContext, vendor: str, levels: list[LevelInfo]) -> SlideInfo:
    """SlideInfo of a file opened by ``ctx.loader``: size, pixel size from the loader's chain, metadata."""
    mpp, source = metadata.pixel_size(ctx)
    return SlideInfo(
        path=ctx.path,
        width=ctx.image.width,
        height=ctx.image.height,
        mpp=mpp or 0.0,
        mpp_source=source,
        vendor=vendor,
        loader=ctx.loader,
        levels=tuple(levels),
        objective_power=metadata.objective(ctx),
        properties=metadata.report_properties(ctx.image),
    )


def _level_colours(info: SlideInfo) -> list[LevelColour]:
    """Per level, what the file stores and whether the decoder will return mislabelled YCbCr."""
    if info.loader == "openslideload" and info.vendor not in TIFF_DECODED_VENDORS:
        return [LevelColour(f"decoded by OpenSlide's {info.vendor} reader (not inspected)", False, None)
                for _ in info.levels]
    dirs = tiffdir.read_directories(info.path)
    levels = [colour.plan_level(info.path, colour.match_directory(dirs, lv.width, lv.height)) for lv in info.levels]
    # Scanners embed the profile once (Aperio: in level 0's directory); it describes every level.
    profile = next((lv.icc_profile for lv in levels if lv.icc_profile), None)
    return [lv if lv.icc_profile or profile is None else dataclasses.replace(lv, icc_profile=profile)
            for lv in levels]


def check_slide_file(p: Path) -> os.stat_result:
    """stat() of a slide path, refusing at once (never opening it: a FIFO would block) anything that is not
    an existing, readable regular file."""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise SlideNotFound(f"{p}: no such slide file; check the path") from None
    except OSError as exc:
        raise SlideReadError(f"{p}: cannot be examined ({exc.strerror}); check the path and its permissions") \
            from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
                else "a device or socket")
        raise SlideReadError(f"{p}: is {kind}, not a slide file; pass the slide file itself")
    if not os.access(p, os.R_OK):
        raise SlideReadError(f"{p}: is not readable by this user (permission denied); fix its permissions "
                             "(chmod a+r) or run as a user who may read it")
    return st


def _check_path(p: Path, mpp: float | None) -> None:
    check_slide_file(p)
    _check_mpp(p, mpp)


def _check_mpp(p: Path, mpp: float | None) -> None:
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise InvalidPixelSize(f"{p}: the pixel size must be a positive number of microns per pixel, got {mpp}")


def no_pixel_size(p: Path, what: str = "the file has no pixel size (microns per pixel)") -> MissingPixelSize:
    """The error of a slide without a pixel size: how to give one, for one slide or for a mixed folder."""
    return MissingPixelSize(f"{p}: {what}; pass mpp=MICRONS_PER_PIXEL (e.g. mpp=0.25 for 40x, 0.5 for 20x), "
                            "used only for slides without one, or, for a folder of mixed slides, list_file=FILE, a "
                            "CSV with the columns path,mpp giving each slide its own")


def with_pixel_size(info: SlideInfo, mpp: float | None, default_mpp: float | None, require: bool) -> SlideInfo:
    """``info`` with the pixel size to use: ``mpp`` replaces the file's; ``default_mpp`` fills in a missing one
    only; a slide still without one is refused (MissingPixelSize) when ``require``."""
    if mpp is not None:
        if info.mpp and info.mpp != mpp:
            log.info("%s: using the given pixel size %g um/px instead of the file's %g (%s)", info.path, mpp,
                     info.mpp, info.mpp_source)
        return dataclasses.replace(info, mpp=float(mpp), mpp_source="user")
    if info.mpp:
        return info
    if default_mpp is not None:
        return dataclasses.replace(info, mpp=float(default_mpp), mpp_source="user")
    if require:
        raise no_pixel_size(Path(info.path))
    return info


def _read_info(p: Path) -> tuple[SlideInfo, list[dict[str, Any]]]:
    image = _openslide_image(p)
    if image is not None:
        return _openslide_info(p, image)
    if p.suffix.lower() in VENDOR_SUFFIXES:
        raise SlideReadError(
            f"{p}: OpenSlide cannot read this {p.suffix} file (truncated, corrupt or not a slide); "
            "re-copy it from the scanner or pass a valid slide"
        )
    try:
        image = pyvips.Image.tiffload(str(p))
    except pyvips.Error as exc:
        first = next((ln for ln in str(exc).splitlines()[1:] if ln.strip()), "unknown format")
        raise SlideReadError(
            f"{p}: not a slide that OpenSlide or the TIFF loader can read ({first.strip()}); "
            "pass an SVS/NDPI/MRXS/SCN slide or a (pyramidal) TIFF / OME-TIFF"
        ) from exc
    return _tiff_info(p, image)


def open_slide(path: str | os.PathLike[str], mpp: float | None = None,
               colour_transform: ColourTransform | str = "none", on_decode_error: OnDecodeError = "fail",
               *, default_mpp: float | None = None, require_mpp: bool = True) -> SlideReader:
    """Open a whole-slide image. ``mpp`` (microns per level-0 pixel) replaces the file's pixel size;
    ``default_mpp`` is used only when the file has none. ``require_mpp`` False opens a slide without any pixel
    size (``info.mpp`` 0.0, source "none": it can be described, not scaled).

    ``colour_transform`` is the bundle's choice for embedded ICC profiles: "none" (raw decoded values, the
    default) or "icc-to-srgb". ``on_decode_error``: "fail" (a read meeting a tile the decoder reports as
    corrupt raises ``SlideDecodeError``, a ``SlideReadError``) or "warn" (such tiles are counted in
    ``decode_errors()``). Raises ``SlideNotFound`` (no such file), ``SlideReadError`` (not a slide, or
    corrupt), ``InvalidPixelSize`` (a bad ``mpp``) and ``MissingPixelSize`` (no usable pixel size, no ``mpp``).
    """
    p = Path(path)
    from slidefuse.runtime.slide import dicom  # a DICOM WSI series (folder or .dcm): its own reader

    if dicom.is_dicom(p):
        _check_mpp(p, mpp)
        _check_mpp(p, default_mpp)
        dcm = dicom.open_dicom(p, mpp, default_mpp=default_mpp, require_mpp=require_mpp)
        dcm.decode_log = DecodeLog(p, on_decode_error)
        return dcm
    _check_path(p, mpp)
    _check_mpp(p, default_mpp)
    if colour_transform not in colour.COLOUR_TRANSFORMS:
        raise ValueError(f"colour_transform must be one of {colour.COLOUR_TRANSFORMS}, got {colour_transform!r}")
    transform = cast(ColourTransform, colour_transform)
    # A slide opened before in this process must be decoded again, not served from libvips' cached load (whose
    # tiles are decoded already): the decoders' reports of corrupt tiles come only from a decode.
    drop_operation_cache()
    info, level_args = _read_info(p)
    info = with_pixel_size(info, mpp, default_mpp, require_mpp)
    reader = _VipsFileSlide(info, level_args, fail_on=info.loader == "tiffload",
                            level_colours=_level_colours(info), transform=transform)
    reader.decode_log = DecodeLog(p, on_decode_error)
    reader.info = dataclasses.replace(info, colour=reader.colour_pipeline())
    for step in reader.info.colour.conversions if reader.info.colour else ():
        # OpenSlide hands out premultiplied RGBA: flattening its alpha is routine, everything else is news.
        log.log(logging.DEBUG if step.endswith("alpha-flattened-on-white") and info.loader == "openslideload"
                else logging.INFO, "%s: colour: %s", p, step)
    log.debug("%s: %s, %dx%d, %d levels, %g um/px from %s, colour %s", p, info.loader, info.width, info.height,
              len(info.levels), info.mpp, info.mpp_source, reader.info.colour)
    try:
        check_decode_bounds(info)
    except BaseException:
        reader.close()
        raise
    _probe(reader)
    return reader


def check_decode_bounds(info: SlideInfo) -> None:
    """Refuse, before any pixel is decoded, a slide that cannot be read within bounded time and disk: a
    coarsest level over MAX_DECODE_PIXELS (a thumbnail would decode it whole), or a TIFF stored in strips over
    MAX_STRIP_PIXELS (libvips decodes such a file whole into a temporary file for random access)."""
    smallest = min(lv.width * lv.height for lv in info.levels)
    fix = "convert it to a tiled pyramid (e.g. vips tiffsave SLIDE OUT.tif --tile --pyramid) and pass that"
    if smallest > MAX_DECODE_PIXELS:
        raise SlideReadError(f"{info.path}: its smallest level has {smallest / 1e9:,.0f} gigapixels, over the limit "
                             f"of {MAX_DECODE_PIXELS / 1e9:g} gigapixels decoded for a thumbnail; {fix}")
    if info.loader != "tiffload" or info.width * info.height <= MAX_STRIP_PIXELS:
        return
    dirs = tiffdir.read_directories(Path(info.path))
    if dirs and not dirs[0].tiled:
        raise SlideReadError(f"{info.path}: {info.width} x {info.height} px stored in strips, not tiles: reading "
                             f"it would decode all {info.width * info.height / 1e9:,.1f} gigapixels into a temporary "
                             f"file (limit {MAX_STRIP_PIXELS / 1e9:g} gigapixels in strips); {fix}")


def _probe(reader: SlideReader) -> None:
    """Decode one small corner of the coarsest level, so that a file whose pixels cannot be decoded at all is
    refused at open time with a clear message rather than mid-run."""
    i = reader.info
    k = len(i.levels) - 1
    lv = i.levels[k]
    image = reader._to_rgb(k, reader._load_level(k))
    w, h = min(lv.width, 64), min(lv.height, 64)
    try:
        with decode.watch(reader, k, (0, 0, w, h)):
            pyvips.Region.new(image).fetch(0, 0, w, h)
    except pyvips.Error as exc:
        raise _corrupt(i.path, "cannot decode its pixels", exc) from exc
