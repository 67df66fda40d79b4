"""DICOM WSI (VL Whole Slide Microscopy Image) slides, read through `wsidicom` (the `dicom` extra).

A DICOM slide is a series of `.dcm` instances, one per pyramid level (or several): pass the folder that holds
them, or any one `.dcm` file of it (its folder is opened). The pixel size comes from the DICOM metadata
(Pixel Spacing of the finest level, via wsidicom), the levels from the instances of the series' pyramid.

Pixels. A level is a libvips mosaic of its frames (tiles), cropped to the level's size. Frames that libvips
decodes itself (baseline JPEG in YCbCr, JPEG 2000) stay encoded until a region needs them, so a level is
decoded lazily and from many threads; frames in other transfer syntaxes (JPEG-LS, JPEG lossless, RLE,
uncompressed, RGB-coded JPEG) are decoded by wsidicom when the level is first used, which holds that level
decoded in memory (refused above `MAX_EAGER_PIXELS`). The encoded frames of a level in use stay in memory.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyvips

from slidefuse.errors import SlideReadError, one_line, require
from slidefuse.runtime.slide.decode import LevelBox, SourceTile
from slidefuse.runtime.slide.reader import SlideReader, no_pixel_size, with_pixel_size
from slidefuse.runtime.types import ColourPipeline, LevelInfo, SlideInfo

log = logging.getLogger(__name__)

# Transfer syntaxes whose frames libvips decodes from the encoded bytes (lazily): JPEG baseline, JPEG 2000.
LIBVIPS_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "jpeg",  # JPEG baseline (8 bit)
    "1.2.840.10008.1.2.4.90": "jpeg2000",  # JPEG 2000, lossless only
    "1.2.840.10008.1.2.4.91": "jpeg2000",  # JPEG 2000
}
MAX_EAGER_PIXELS = 400_000_000  # a level decoded by wsidicom is held in memory: 1.2 GB of RGB at most


def is_dicom(path: Path) -> bool:
    """Whether `path` names a DICOM slide: a `.dcm` file, or a folder holding DICOM files (`.dcm` files with the
    DICOM preamble, not in sub-folders; a stray text file named `.dcm` does not make a folder a slide)."""
    if path.suffix.lower() == ".dcm":
        return True
    return path.is_dir() and any(p.suffix.lower() == ".dcm" and is_dicom_file(p) for p in path.iterdir())


def is_dicom_file(path: Path) -> bool:
    """Whether `path` is a DICOM Part 10 file: a regular file whose 128-byte preamble is followed by `DICM`."""
    try:
        if not path.is_file():
            return False
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _wsidicom() -> Any:
    return require("wsidicom", extra="dicom", purpose="reading DICOM WSI slides")


def _syntax(level: Any) -> str:
    return str(getattr(level.default_instance.image_data, "transfer_syntax", "") or "")


def _photometric(level: Any) -> str:
    return str(getattr(level.default_instance.image_data, "photometric_interpretation", "") or "")


def _lazy_decoder(level: Any) -> str | None:
    """"jpeg" or "jpeg2000" when libvips can decode this level's frames as stored, else None."""
    kind = LIBVIPS_SYNTAXES.get(_syntax(level))
    if kind == "jpeg" and _photometric(level) == "RGB":
        return None  # RGB-coded JPEG without an Adobe marker: libjpeg would take it for YCbCr
    return kind


class DicomSlide(SlideReader):
    """A DICOM WSI series opened with wsidicom; each level a libvips mosaic of its frames."""

    def __init__(self, info: SlideInfo, wsi: Any) -> None:
        super().__init__(info)
        self._wsi = wsi
        self._levels = list(wsi.levels)  # finest first, as info.levels

    def _load_level(self, level: int) -> pyvips.Image:
        lv = self._levels[level]
        width, height = lv.size.width, lv.size.height
        tw, th = lv.tile_size.width, lv.tile_size.height
        nx, ny = math.ceil(width / tw), math.ceil(height / th)
        try:
            if _lazy_decoder(lv) is not None:
                tiles = [pyvips.Image.new_from_buffer(self._wsi.read_encoded_tile(lv.level, (x, y),
                                                                                   crop_to_image_boundary=False), "")
                         for y in range(ny) for x in range(nx)]
                tiles = [t if t.bands == 3 else t.colourspace("srgb") for t in tiles]
                mosaic = pyvips.Image.arrayjoin(tiles, across=nx)
            else:
                mosaic = self._decoded(lv, nx, ny, tw, th)
        except (pyvips.Error, OSError, ValueError) as exc:
            raise SlideReadError(f"{self.info.path}: cannot read DICOM level {level} ({one_line(exc)}); the series "
                                 "is incomplete or corrupt: re-export it") from exc
        return mosaic.crop(0, 0, width, height)

    def _source_tiles(self, level: int, level_box: LevelBox) -> list[SourceTile] | None:
        """The encoded frames of a lazily decoded level under ``level_box`` (None for levels wsidicom decodes:
        its decoder raises on what it cannot decode)."""
        lv = self._levels[level]
        if _lazy_decoder(lv) is None:
            return None
        tw, th = lv.tile_size.width, lv.tile_size.height
        x, y, w, h = level_box
        out = []
        for row in range(max(0, y // th), min(math.ceil(lv.size.height / th), math.ceil((y + h) / th))):
            for col in range(max(0, x // tw), min(math.ceil(lv.size.width / tw), math.ceil((x + w) / tw))):
                def encoded(col: int = col, row: int = row) -> bytes | None:
                    return bytes(self._wsi.read_encoded_tile(lv.level, (col, row), crop_to_image_boundary=False))

                box = self._l0_box(level, (col * tw, row * th, tw, th))
                out.append(SourceTile((level, col, row), box, encoded))
        return out

    def _decoded(self, lv: Any, nx: int, ny: int, tw: int, th: int) -> pyvips.Image:
        """The level decoded by wsidicom, tile by tile, into one uint8 RGB array in memory."""
        if nx * tw * ny * th > MAX_EAGER_PIXELS:
            raise SlideReadError(
                f"{self.info.path}: DICOM level {lv.level} is stored as {_syntax(lv)}, which slidefuse decodes whole "
                f"({nx * tw} x {ny * th} px, over {MAX_EAGER_PIXELS / 1e6:g} Mpx); re-encode the series with JPEG or "
                "JPEG 2000 frames (e.g. wsidicomizer --format jpeg)")
        out = np.empty((ny * th, nx * tw, 3), dtype=np.uint8)
        for y in range(ny):
            for x in range(nx):
                tile = np.asarray(self._wsi.read_tile(lv.level, (x, y)).convert("RGB"))
                out[y * th:y * th + tile.shape[0], x * tw:x * tw + tile.shape[1]] = tile
        return pyvips.Image.new_from_array(out, interpretation="srgb")

    def close(self) -> None:
        super().close()
        self._wsi.close()


def _info(path: Path, wsi: Any) -> SlideInfo:
    """The series' SlideInfo with the file's own pixel size (0.0, source "none", when it has no Pixel Spacing)."""
    levels = list(wsi.levels)
    base = levels[0]
    try:
        file_mpp: float | None = float(base.mpp.width)
    except Exception:  # wsidicom raises its own error for a level without Pixel Spacing
        file_mpp = None
    stored = tuple(f"{LIBVIPS_SYNTAXES.get(_syntax(lv), _syntax(lv))} {_photometric(lv)}".strip() for lv in levels)
    return SlideInfo(
        path=path,
        width=base.size.width,
        height=base.size.height,
        mpp=float(file_mpp or 0.0),
        mpp_source="dicom" if file_mpp else "none",
        vendor="dicom",
        loader="wsidicom",
        levels=tuple(LevelInfo(lv.size.width, lv.size.height, base.size.width / lv.size.width) for lv in levels),
        properties={"dicom.transfer-syntax": _syntax(base), "dicom.photometric": _photometric(base),
                    "dicom.pixel-spacing-um": f"{file_mpp:g}" if file_mpp else ""},
        colour=ColourPipeline("wsidicom+libvips", stored, (), "not applied (DICOM ICC profile ignored)"),
    )


def open_dicom(path: Path, mpp: float | None = None, *, default_mpp: float | None = None,
               require_mpp: bool = True) -> DicomSlide:
    """Open a DICOM WSI series (a folder of `.dcm` files, or one `.dcm` file of it) as a SlideReader. The pixel
    size: as `reader.open_slide` (`mpp` replaces the file's, `default_mpp` fills in a missing one)."""

    wsidicom = _wsidicom()
    folder = path.parent if path.is_file() else path
    if not folder.exists():
        from slidefuse.errors import SlideNotFound

        raise SlideNotFound(f"{path}: no such DICOM file or folder; check the path")
    try:
        wsi = wsidicom.WsiDicom.open(folder)
    except Exception as exc:  # wsidicom's own errors: no WSI instances, mixed series, unreadable files
        raise SlideReadError(f"{path}: not a DICOM WSI series wsidicom can open ({one_line(exc)}); pass a folder "
                             "holding the .dcm files of one slide") from exc
    try:
        info = _info(path, wsi)
        if not info.mpp and mpp is None and default_mpp is None and require_mpp:
            raise no_pixel_size(path, "the DICOM series has no Pixel Spacing")
        info = with_pixel_size(info, mpp, default_mpp, require_mpp)
    except BaseException:
        wsi.close()
        raise
    log.debug("%s: DICOM WSI, %dx%d, %d levels, %g um/px from %s", path, info.width, info.height,
              len(info.levels), info.mpp, info.mpp_source)
    return DicomSlide(info, wsi)
