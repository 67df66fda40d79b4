"""Slides of every colour layout, written with tifffile (not with slidefuse), for the cross-reader tests.

Each builder returns the file's path. Pixels come from a real H&E source when one is given (the CMU slide),
else from a synthetic stain-like image, so the colour conversions are exercised on realistic values.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyvips
import tifffile
from PIL import Image

MPP = 0.5
_RES = (10000.0 / MPP, 1.0)  # px per cm, so the file carries a 0.5 um/px pixel size


def _jfif_tiles(a: np.ndarray, tile: int) -> Iterator[bytes]:
    """JFIF (YCbCr) JPEG streams of each tile of ``a``, row-major, edge tiles padded with white."""
    h, w = a.shape[:2]
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            t = np.full((tile, tile, 3), 255, np.uint8)
            part = a[y : y + tile, x : x + tile]
            t[: part.shape[0], : part.shape[1]] = part
            buf = io.BytesIO()
            Image.fromarray(t).save(buf, "JPEG", quality=92, subsampling=0)
            yield buf.getvalue()


def _set_photometric(path: Path, value: int) -> None:
    """Rewrite every IFD's PhotometricInterpretation (little-endian classic TIFF) in place."""
    data = bytearray(path.read_bytes())
    (offset,) = struct.unpack("<I", data[4:8])
    while offset:
        (n,) = struct.unpack("<H", data[offset : offset + 2])
        for i in range(n):
            e = offset + 2 + 12 * i
            if struct.unpack("<H", data[e : e + 2])[0] == 262:
                data[e + 8 : e + 10] = struct.pack("<H", value)
        (offset,) = struct.unpack("<I", data[offset + 2 + 12 * n : offset + 6 + 12 * n])
    path.write_bytes(bytes(data))


def ycbcr_tagged_rgb(src: np.ndarray, path: Path, aperio: bool = False) -> Path:
    """The Bio-Formats trap: JFIF YCbCr JPEG tiles under PhotometricInterpretation = RGB, 2 levels.

    ``aperio``: an Aperio-style description, so OpenSlide (not libvips' tiffload) reads it.
    """
    desc = (f"Aperio Image Library v10.0.0\n{src.shape[1]}x{src.shape[0]} JPEG/RGB Q=92|AppMag = 20|MPP = {MPP}"
            if aperio else None)
    with tifffile.TiffWriter(path) as w:
        for k, a in enumerate((src, src[::2, ::2])):
            w.write(_jfif_tiles(a, 256), shape=a.shape, dtype="uint8", tile=(256, 256), compression="jpeg",
                    photometric="rgb", description=desc if k == 0 else None, metadata=None,
                    resolution=_RES, resolutionunit="CENTIMETER")
    _set_photometric(path, 2)  # tifffile writes 6 (YCbCr) for JPEG; the trap is a 2 (RGB) tag
    return path


def vips_jpeg(src: np.ndarray, path: Path, rgbjpeg: bool) -> Path:
    """libvips' own pyramidal JPEG TIFF: YCbCr photometric with 2x2 chroma subsampling, or RGB JPEG."""
    im = pyvips.Image.new_from_array(src, interpretation="srgb")
    im.tiffsave(str(path), tile=True, tile_width=256, tile_height=256, pyramid=True, compression="jpeg", Q=90,
                rgbjpeg=rgbjpeg, xres=1000.0 / MPP, yres=1000.0 / MPP, resunit="cm")
    return path


def plain(array: np.ndarray, path: Path, photometric: str, **kw: object) -> Path:
    """A one-level tiled deflate TIFF of ``array`` with the given photometric interpretation."""
    tifffile.imwrite(path, array, photometric=photometric, tile=(256, 256), compression="zlib",
                     resolution=_RES, resolutionunit="CENTIMETER", metadata=None, **kw)  # type: ignore[arg-type]
    return path


def rgba(src: np.ndarray, path: Path) -> Path:
    """RGB plus an alpha channel that is transparent at the left and opaque at the right."""
    alpha = np.broadcast_to(np.linspace(0, 255, src.shape[1]).astype(np.uint8), src.shape[:2])
    return plain(np.dstack([src, alpha]), path, "rgb", extrasamples=("unassalpha",))


def grey16(src: np.ndarray, path: Path) -> Path:
    grey = (src.astype(np.uint32) @ np.array([77, 150, 29]) // 256).astype(np.uint16) * 257
    return plain(grey, path, "minisblack")


def grey8(src: np.ndarray, path: Path) -> Path:
    return plain((src.astype(np.uint32) @ np.array([77, 150, 29]) // 256).astype(np.uint8), path, "minisblack")


def palette(src: np.ndarray, path: Path) -> Path:
    """An 8-bit palette image: 64 colours from the source, indices per pixel."""
    q = pyvips.Image.new_from_array(src, interpretation="srgb")
    small = (src // 64).astype(np.uint8)  # 4 levels per channel -> 64 colours
    idx = (small[:, :, 0].astype(np.uint8) * 16 + small[:, :, 1] * 4 + small[:, :, 2]).astype(np.uint8)
    levels = np.array([32, 96, 160, 224], np.uint16) * 257
    cmap = np.zeros((3, 256), np.uint16)
    for i in range(64):
        cmap[:, i] = levels[[i // 16, (i // 4) % 4, i % 4]]
    del q
    return plain(idx, path, "palette", colormap=cmap)


def cmyk(src: np.ndarray, path: Path) -> Path:
    """A CMYK (separated) TIFF made from RGB with the naive formula."""
    rgb = src.astype(np.float64) / 255.0
    k = 1.0 - rgb.max(axis=2)
    denom = np.where(k < 1.0, 1.0 - k, 1.0)
    cmy = (1.0 - rgb - k[:, :, None]) / denom[:, :, None]
    data = np.rint(np.dstack([cmy, k]) * 255.0).astype(np.uint8)
    return plain(data, path, "separated")
