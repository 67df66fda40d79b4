"""The colour pipeline: from what a slide file stores to the sRGB uint8 pixels the model sees.

Decoders trust the TIFF PhotometricInterpretation tag. Some writers (Bio-Formats' OME-TIFF, some
scanner exports) store JPEG tiles whose streams are JFIF YCbCr while the tag says RGB; libtiff (so
libvips' tiffload) and OpenSlide then return the raw Y, Cb, Cr values as if they were R, G, B: pink
glass, green haematoxylin. ``plan_level`` detects that from the file (``tiffdir``) and ``apply`` converts
lazily in libvips with the JFIF matrix. ``apply`` also brings every other layout to 3-band uchar sRGB
(alpha flattened onto white, grey replicated, 16 bits scaled to 8, CMYK through libvips' built-in CMYK
profile) and, when the bundle asks for ``icc-to-srgb``, converts through the slide's embedded ICC profile.
Every step taken is named in a ``ColourPipeline`` that goes into the slide's report: nothing is silent.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyvips

from slidefuse.errors import SlideReadError
from slidefuse.runtime.slide import tiffdir
from slidefuse.runtime.types import ColourPipeline

log = logging.getLogger(__name__)

ColourTransform = Literal["none", "icc-to-srgb"]
COLOUR_TRANSFORMS: tuple[ColourTransform, ...] = ("none", "icc-to-srgb")
JpegSpace = Literal["ycbcr", "rgb", "unknown"]
WHITE = 255

# JFIF (ITU-T T.871) full-range YCbCr -> RGB: rgb = M @ (ycc - [0, 128, 128]).
_JFIF_MATRIX = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))
_JFIF_OFFSET = tuple(-(row[1] * 128.0 + row[2] * 128.0) for row in _JFIF_MATRIX)
_JPEG = 7  # TIFF Compression: JPEG ("new-style")
_RGB, _YCBCR = 2, 6  # TIFF PhotometricInterpretation
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_COMPRESSIONS = {1: "uncompressed", 5: "lzw", 7: "jpeg", 8: "deflate", 32946: "deflate", 34712: "jpeg2000",
                 33003: "jpeg2000 (aperio ycbcr)", 33005: "jpeg2000 (aperio rgb)", 34887: "jpegxr",
                 50001: "webp", 50000: "zstd"}
_PHOTOMETRICS = {0: "white-is-zero", 1: "grey", 2: "rgb", 3: "palette", 5: "cmyk", 6: "ycbcr", 8: "cielab"}


@dataclass(frozen=True)
class LevelColour:
    """What one pyramid level stores, and whether its decoded values are YCbCr mislabelled as RGB."""

    stored: str  # e.g. "jpeg rgb (stream ycbcr)", "jpeg2000 (aperio rgb) rgb", "unknown"
    ycbcr_as_rgb: bool  # the decoder returns raw YCbCr for this level: convert with the JFIF matrix
    icc_profile: bytes | None  # the level's embedded ICC profile, when the file has one


def jpeg_colour_space(*streams: bytes | None) -> JpegSpace:
    """Colour space of 3-component JPEG data, decided as libjpeg does when nothing overrides it.

    JFIF APP0 -> YCbCr; Adobe APP14 transform 1 -> YCbCr, 0 -> RGB; otherwise component ids 1, 2, 3 ->
    YCbCr and 'R', 'G', 'B' -> RGB. ``streams`` are the TIFF JPEGTables and the start of a tile; the
    first marker found in either decides. Other ids (Aperio writes 0, 1, 2) give "unknown": trust the tag.
    """
    ids: tuple[int, ...] | None = None
    for data in streams:
        for marker, payload in _markers(data or b""):
            if marker == 0xE0 and payload.startswith(b"JFIF\0"):
                return "ycbcr"
            if marker == 0xEE and payload.startswith(b"Adobe") and len(payload) >= 12:
                return "rgb" if payload[11] == 0 else "ycbcr"
            if marker in _SOF and len(payload) >= 6 and payload[5] == 3 and len(payload) >= 15:
                ids = (payload[6], payload[9], payload[12])
    if ids == (1, 2, 3):
        return "ycbcr"
    if ids == (82, 71, 66):
        return "rgb"
    return "unknown"


def _markers(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, payload) of the JPEG segments before the first SOS; [] when ``data`` is not a JPEG stream."""
    out: list[tuple[int, bytes]] = []
    if not data.startswith(b"\xff\xd8"):
        return out
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker in (0xD9, 0xDA):  # EOI, SOS: no more headers
            break
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        out.append((marker, data[i + 4 : i + 2 + length]))
        i += 2 + length
    return out


def plan_level(path: Path, directory: tiffdir.Directory | None) -> LevelColour:
    """How to read one level, from its TIFF directory (None: not a TIFF-structured file)."""
    if directory is None:
        return LevelColour("unknown (not a TIFF directory)", False, None)
    d = directory
    stored = f"{_COMPRESSIONS.get(d.compression, f'compression {d.compression}')} " \
             f"{_PHOTOMETRICS.get(d.photometric, f'photometric {d.photometric}')}"
    mislabelled = False
    if d.compression == _JPEG and d.photometric == _RGB and d.samples >= 3:
        space = jpeg_colour_space(d.jpeg_tables, tiffdir.first_segment_bytes(path, d))
        stored += f" (stream {space})"
        mislabelled = space == "ycbcr"
    return LevelColour(stored, mislabelled, d.icc_profile)


def match_directory(dirs: list[tiffdir.Directory] | None, width: int, height: int) -> tiffdir.Directory | None:
    """The directory of a pyramid level of ``width`` x ``height`` px (tiled ones first), or None."""
    if not dirs:
        return None
    same = [d for d in dirs if d.width == width and d.height == height]
    same.sort(key=lambda d: not d.tiled)
    return same[0] if same else None


def _ycbcr_to_rgb(image: pyvips.Image) -> pyvips.Image:
    rgb = image.extract_band(0, n=3).recomb([list(r) for r in _JFIF_MATRIX])
    rgb = rgb.linear([1.0, 1.0, 1.0], [o + 0.5 for o in _JFIF_OFFSET])  # +0.5: cast truncates
    out = rgb.cast("uchar")  # clips to 0..255
    if image.bands > 3:
        out = out.bandjoin(image.extract_band(3, n=image.bands - 3))
    return out.copy(interpretation="srgb")


def _icc_to_srgb(image: pyvips.Image, profile: bytes) -> pyvips.Image:
    image = image.copy()
    image.set_type(pyvips.GValue.blob_type, "icc-profile-data", profile)
    return image.icc_transform("srgb", embedded=True, intent="relative", depth=8)


def apply(image: pyvips.Image, level: LevelColour, transform: ColourTransform,
          path: Path) -> tuple[pyvips.Image, tuple[str, ...]]:
    """``image`` (as decoded) -> lazy 3-band uchar sRGB, and the names of the conversions applied, in order."""
    steps: list[str] = []
    if level.ycbcr_as_rgb:
        image = _ycbcr_to_rgb(image)
        steps.append("jfif-ycbcr-to-rgb")
    if image.interpretation == "cmyk" or (image.bands == 4 and image.interpretation == "multiband"):
        try:
            image = image.icc_import(intent="relative").colourspace("srgb").cast("uchar")
        except pyvips.Error as exc:
            raise SlideReadError(f"{path}: a CMYK slide this libvips cannot convert to RGB "
                                 f"({' '.join(str(exc).split())}); convert it to RGB first") from exc
        steps.append("cmyk-to-srgb")
    if image.interpretation in ("rgb16", "grey16") or image.format == "ushort":
        image = image.colourspace("srgb" if image.bands >= 3 else "b-w")
        steps.append("16-bit-to-8-bit")
    if image.hasalpha():
        image = image.flatten(background=[WHITE] * (image.bands - 1))
        steps.append("alpha-flattened-on-white")
    if image.bands == 1:
        image = image.bandjoin([image, image])
        steps.append("grey-to-rgb")
    elif image.bands > 3:
        image = image.extract_band(0, n=3)
        steps.append(f"first-3-of-{image.bands}-bands")
    if image.format != "uchar":
        image = image.cast("uchar")
    if transform == "icc-to-srgb" and level.icc_profile:
        image = _icc_to_srgb(image, level.icc_profile)
        steps.append("icc-to-srgb")
    return image, tuple(steps)


def describe(decoder: str, levels: list[LevelColour], steps: tuple[str, ...],
             transform: ColourTransform) -> ColourPipeline:
    """The report's record of the colour pipeline of a slide (level 0's conversions, every level's storage)."""
    has_icc = any(lv.icc_profile for lv in levels)
    if not has_icc:
        icc = "no embedded profile"
    elif transform == "icc-to-srgb":
        icc = "embedded profile converted to sRGB (relative colorimetric)"
    else:
        icc = "embedded profile present, not applied (bundle color_transform: none)"
    return ColourPipeline(
        decoder=decoder,
        stored=tuple(lv.stored for lv in levels),
        conversions=steps,
        icc=icc,
        color_transform=transform,
    )
