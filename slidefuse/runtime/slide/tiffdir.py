"""A minimal, defensive reader of TIFF directories (classic TIFF and BigTIFF, either byte order).

libvips and OpenSlide do not expose the few tags the colour pipeline needs (compression, photometric
interpretation, the first JPEG tile, the ICC profile), so this module reads them straight from the file.
It never decodes pixels and never raises on a malformed file: anything it cannot parse comes back as
``None`` (the caller then trusts the decoder, and says so in the report).
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

# Tags read by this module.
WIDTH, LENGTH, BITS, COMPRESSION, PHOTOMETRIC = 256, 257, 258, 259, 262
STRIP_OFFSETS, SAMPLES, STRIP_COUNTS, PLANAR = 273, 277, 279, 284
TILE_OFFSETS, TILE_COUNTS, SUBIFDS, EXTRA_SAMPLES = 324, 325, 330, 338
JPEG_TABLES, YCBCR_SUBSAMPLING, ICC_PROFILE = 347, 530, 34675

MAX_IFDS = 4096  # a chain longer than this is corrupt (or a loop)
MAX_BLOB = 64 << 20  # largest tag payload read (an ICC profile or JPEG tables), bytes
_TYPES = {1: "B", 2: "B", 3: "H", 4: "I", 5: "II", 6: "b", 7: "B", 8: "h", 9: "i", 10: "ii", 11: "f",
          12: "d", 13: "I", 16: "Q", 17: "q", 18: "Q"}


@dataclass(frozen=True)
class Directory:
    """One image file directory: the tags the colour pipeline needs. Offsets are file offsets (bytes)."""

    offset: int  # file offset of this IFD
    width: int  # px
    height: int  # px
    compression: int  # TIFF Compression tag (1 none, 5 LZW, 7 JPEG, 8 deflate, 33003/33005 Aperio J2K, ...)
    photometric: int  # TIFF PhotometricInterpretation (1 black-is-zero, 2 RGB, 3 palette, 5 CMYK, 6 YCbCr)
    samples: int  # samples per pixel
    bits: int  # bits per sample (first sample)
    first_segment: tuple[int, int] | None  # (offset, byte count) of the first non-empty tile or strip
    jpeg_tables: bytes | None  # JPEGTables payload, when present
    icc_profile: bytes | None  # InterColorProfile payload, when present
    subifds: tuple[int, ...]  # offsets of SubIFDs (OME-TIFF pyramids)
    tiled: bool  # tiles (True) or strips (False)


class _Reader:
    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh, self.size = fh, size
        fh.seek(0)
        head = fh.read(16)
        if head[:2] not in (b"II", b"MM"):
            raise ValueError("not a TIFF file")
        self.bo = "<" if head[:2] == b"II" else ">"
        magic = struct.unpack(self.bo + "H", head[2:4])[0]
        if magic == 42:
            self.big, self.first = False, struct.unpack(self.bo + "I", head[4:8])[0]
        elif magic == 43:
            self.big, self.first = True, struct.unpack(self.bo + "Q", head[8:16])[0]
        else:
            raise ValueError(f"TIFF magic {magic} is neither 42 nor 43")

    def read_at(self, offset: int, n: int) -> bytes:
        if offset < 0 or n < 0 or offset + n > self.size or n > MAX_BLOB:
            raise ValueError(f"read of {n} bytes at {offset} is outside the file")
        self.fh.seek(offset)
        return self.fh.read(n)

    def entries(self, offset: int) -> tuple[dict[int, tuple[int, int, bytes]], int]:
        """Raw entries {tag: (type, count, value-or-offset bytes)} of the IFD at ``offset``, and the next one."""
        cnt_fmt, ent_size, off_fmt = ("Q", 20, "Q") if self.big else ("H", 12, "I")
        cnt_size = struct.calcsize(cnt_fmt)
        n = struct.unpack(self.bo + cnt_fmt, self.read_at(offset, cnt_size))[0]
        if n > 10_000:
            raise ValueError(f"IFD at {offset} claims {n} entries")
        raw = self.read_at(offset + cnt_size, n * ent_size + struct.calcsize(off_fmt))
        out: dict[int, tuple[int, int, bytes]] = {}
        for i in range(n):
            e = raw[i * ent_size : (i + 1) * ent_size]
            tag, typ = struct.unpack(self.bo + "HH", e[:4])
            count = struct.unpack(self.bo + ("Q" if self.big else "I"), e[4 : 12 if self.big else 8])[0]
            out[tag] = (typ, count, e[12:] if self.big else e[8:])
        nxt = struct.unpack(self.bo + off_fmt, raw[n * ent_size :])[0]
        return out, nxt

    def payload(self, entry: tuple[int, int, bytes], limit: int | None = None) -> bytes:
        typ, count, inline = entry
        item = struct.calcsize(_TYPES.get(typ, "B"))
        if limit is not None:
            count = min(count, limit)
        nbytes = item * count
        if nbytes <= len(inline):
            return inline[:nbytes]
        off = struct.unpack(self.bo + ("Q" if self.big else "I"), inline)[0]
        return self.read_at(off, nbytes)

    def values(self, entry: tuple[int, int, bytes], limit: int = 1 << 20) -> list[int]:
        typ = entry[0]
        if typ not in (1, 3, 4, 6, 8, 9, 13, 16, 17, 18):
            return []
        code = _TYPES[typ]
        data = self.payload(entry, limit)
        return list(struct.unpack(self.bo + code * (len(data) // struct.calcsize(code)), data))


def _first_segment(r: _Reader, e: dict[int, tuple[int, int, bytes]]) -> tuple[tuple[int, int] | None, bool]:
    tiled = TILE_OFFSETS in e
    off_tag, cnt_tag = (TILE_OFFSETS, TILE_COUNTS) if tiled else (STRIP_OFFSETS, STRIP_COUNTS)
    if off_tag not in e or cnt_tag not in e:
        return None, tiled
    offsets, counts = r.values(e[off_tag], 4096), r.values(e[cnt_tag], 4096)
    for off, cnt in zip(offsets, counts, strict=False):
        if off and cnt:
            return (off, cnt), tiled
    return None, tiled


def _directory(r: _Reader, offset: int) -> tuple[Directory, int]:
    e, nxt = r.entries(offset)

    def first(tag: int, default: int) -> int:
        vals = r.values(e[tag], 1) if tag in e else []
        return int(vals[0]) if vals else default

    def blob(tag: int) -> bytes | None:
        return r.payload(e[tag]) if tag in e else None

    segment, tiled = _first_segment(r, e)
    d = Directory(
        offset=offset,
        width=first(WIDTH, 0),
        height=first(LENGTH, 0),
        compression=first(COMPRESSION, 1),
        photometric=first(PHOTOMETRIC, -1),
        samples=first(SAMPLES, 1),
        bits=first(BITS, 1),
        first_segment=segment,
        jpeg_tables=blob(JPEG_TABLES),
        icc_profile=blob(ICC_PROFILE),
        subifds=tuple(r.values(e[SUBIFDS], 64)) if SUBIFDS in e else (),
        tiled=tiled,
    )
    return d, nxt


def read_directories(path: Path) -> list[Directory] | None:
    """Every IFD of the main chain, then every SubIFD, in file order; None when ``path`` is not a readable TIFF."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            r = _Reader(fh, fh.tell())
            dirs: list[Directory] = []
            seen: set[int] = set()
            offset = r.first
            while offset and offset not in seen and len(seen) < MAX_IFDS:
                seen.add(offset)
                d, offset = _directory(r, offset)
                dirs.append(d)
            for parent in list(dirs):
                for sub in parent.subifds:
                    if sub and sub not in seen and len(seen) < MAX_IFDS:
                        seen.add(sub)
                        dirs.append(_directory(r, sub)[0])
            return dirs
    except (OSError, ValueError, struct.error) as exc:
        log.debug("%s: cannot read its TIFF directories (%s)", path, exc)
        return None


def first_segment_bytes(path: Path, d: Directory, limit: int = 1 << 16) -> bytes | None:
    """The first ``limit`` bytes of the directory's first non-empty tile or strip (None when unreadable)."""
    if d.first_segment is None:
        return None
    off, cnt = d.first_segment
    try:
        with open(path, "rb") as fh:
            fh.seek(off)
            return fh.read(min(cnt, limit))
    except OSError:
        return None


TILE_WIDTH, TILE_LENGTH = 322, 323


@dataclass(frozen=True)
class TileLayout:
    """Where a tiled directory's tiles are: tile size and, per tile in row-major order, offset and byte count."""

    tile_width: int  # px
    tile_height: int  # px
    columns: int  # tiles across
    offsets: tuple[int, ...]  # file offset of each tile
    counts: tuple[int, ...]  # byte count of each tile


def tile_layout(path: Path, d: Directory) -> TileLayout | None:
    """The tile layout of a tiled directory (None for strips, or when the tags cannot be read)."""
    if not d.tiled:
        return None
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            r = _Reader(fh, fh.tell())
            e, _ = r.entries(d.offset)
            tw = r.values(e[TILE_WIDTH], 1)[0]
            th = r.values(e[TILE_LENGTH], 1)[0]
            offsets, counts = r.values(e[TILE_OFFSETS], 1 << 24), r.values(e[TILE_COUNTS], 1 << 24)
    except (OSError, ValueError, KeyError, IndexError, struct.error) as exc:
        log.debug("%s: cannot read the tile layout of the IFD at %d (%s)", path, d.offset, exc)
        return None
    if not tw or not th:
        return None
    return TileLayout(int(tw), int(th), -(-d.width // tw), tuple(offsets), tuple(counts))


def read_segment(path: Path, offset: int, count: int) -> bytes | None:
    """``count`` bytes at ``offset`` of the file (None when unreadable or implausible)."""
    if offset <= 0 or count <= 0 or count > MAX_BLOB:
        return None
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(count)
    except OSError:
        return None
