"""Hand-written TIFF files for the reliability tests: huge dimensions that are tiny on disk (every tile or strip
points at one shared deflate-compressed block), and byte-level mutations of a small valid TIFF's directory."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

PINK = (220, 150, 190)  # an H&E-like colour: every tile is tissue

# TIFF field types
SHORT, LONG, RATIONAL = 3, 4, 5


def _entry(tag: int, typ: int, values: list[int] | list[tuple[int, int]], blobs: list[bytes], base: int) -> tuple:
    """(tag, type, count, value-or-offset bytes); values that do not fit in 4 bytes go to `blobs`."""
    if typ == RATIONAL:
        data = b"".join(struct.pack("<II", n, d) for n, d in values)  # type: ignore[misc]
    else:
        data = struct.pack("<" + ("H" if typ == SHORT else "I") * len(values), *values)
    count = len(values)
    if len(data) <= 4:
        return tag, typ, count, data.ljust(4, b"\0")
    offset = base + sum(len(b) for b in blobs)
    blobs.append(data)
    return tag, typ, count, struct.pack("<I", offset)


def write_huge_tiff(path: Path, width: int, height: int, *, mpp: float = 0.5, tile: int | None = 512,
                    rows_per_strip: int = 64) -> Path:
    """A classic little-endian RGB TIFF of `width` x `height` px at `mpp` um/px, deflate-compressed, tiled
    (`tile` px) or in strips (`tile=None`), in which every tile/strip shares one compressed block of PINK."""
    bw, bh = (tile, tile) if tile else (width, rows_per_strip)
    block = zlib.compress(bytes(PINK) * (bw * bh), 9)
    n = ((width + bw - 1) // bw) * ((height + bh - 1) // bh) if tile else (height + bh - 1) // bh
    data_at = 8
    blobs: list[bytes] = []
    base = data_at + len(block)
    px_per_cm = round(1e4 / mpp)
    entries = [
        (256, LONG, [width]), (257, LONG, [height]), (258, SHORT, [8, 8, 8]), (259, SHORT, [8]),
        (262, SHORT, [2]), (277, SHORT, [3]), (282, RATIONAL, [(px_per_cm, 1)]), (283, RATIONAL, [(px_per_cm, 1)]),
        (284, SHORT, [1]), (296, SHORT, [3]),
    ]
    if tile:
        entries += [(322, LONG, [tile]), (323, LONG, [tile]), (324, LONG, [data_at] * n), (325, LONG, [len(block)] * n)]
    else:
        entries += [(273, LONG, [data_at] * n), (278, LONG, [rows_per_strip]), (279, LONG, [len(block)] * n)]
    packed = [_entry(t, ty, v, blobs, base) for t, ty, v in sorted(entries)]  # type: ignore[arg-type]
    ifd_at = base + sum(len(b) for b in blobs)
    ifd_at += ifd_at % 2
    with open(path, "wb") as f:
        f.write(b"II" + struct.pack("<HI", 42, ifd_at))
        f.write(block)
        for b in blobs:
            f.write(b)
        f.write(b"\0" * (ifd_at - f.tell()))
        f.write(struct.pack("<H", len(packed)))
        for tag, typ, count, value in packed:
            f.write(struct.pack("<HHI", tag, typ, count) + value)
        f.write(struct.pack("<I", 0))
    return path
