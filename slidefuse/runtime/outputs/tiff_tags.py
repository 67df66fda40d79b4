"""Per-level pixel sizes in a TIFF pyramid that libvips wrote with SubIFDs, patched in place.

libvips' ``tiffsave(pyramid=True, subifd=True)`` gives every level the full-resolution XResolution and
YResolution; each level should carry its own. This walks the main IFD chain and each IFD's SubIFDs (classic
TIFF or BigTIFF, either byte order) and rewrites the two RATIONAL values of every level in place (same size, so
nothing moves): ``px/cm = 10000 / (mpp * level-0 width / level width)`` (and likewise for y).
"""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

WIDTH, LENGTH, X_RESOLUTION, Y_RESOLUTION, SUBIFDS = 256, 257, 282, 283, 330
RATIONAL = 5
MAX_IFDS = 1 << 16
_SIZES = {1: 1, 3: 2, 4: 4, 5: 8, 13: 4, 16: 8, 18: 8}  # bytes per value of the types read here
_FORMATS = {1: "B", 3: "H", 4: "I", 13: "I", 16: "Q", 18: "Q"}


class _Tiff:
    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        head = f.read(8)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        if order is None:
            raise ValueError("not a TIFF file")
        self.bo: str = order
        magic = struct.unpack(self.bo + "H", head[2:4])[0]
        self.big = magic == 43
        if self.big:
            f.seek(8)
            self.first = struct.unpack(self.bo + "Q", f.read(8))[0]
        else:
            self.first = struct.unpack(self.bo + "I", head[4:8])[0]
        self.count_fmt, self.off_fmt, self.entry, self.inline = ("Q", "Q", 20, 8) if self.big else ("H", "I", 12, 4)

    def _unpack(self, fmt: str, size: int) -> int:
        return int(struct.unpack(self.bo + fmt, self.f.read(size))[0])

    def entries(self, offset: int) -> tuple[dict[int, tuple[int, int, int]], int]:
        """{tag: (type, count, file offset of the value field)} of the IFD at ``offset``, and the next IFD."""
        self.f.seek(offset)
        n = self._unpack(self.count_fmt, 8 if self.big else 2)
        start = offset + (8 if self.big else 2)
        self.f.seek(start)
        raw = self.f.read(n * self.entry)
        out = {}
        for i in range(n):
            e = raw[i * self.entry : (i + 1) * self.entry]
            tag, typ = struct.unpack(self.bo + "HH", e[:4])
            count = struct.unpack(self.bo + ("Q" if self.big else "I"), e[4 : 4 + (8 if self.big else 4)])[0]
            out[tag] = (typ, count, start + i * self.entry + (12 if self.big else 8))
        self.f.seek(start + n * self.entry)
        return out, self._unpack(self.off_fmt, 8 if self.big else 4)

    def values(self, field: tuple[int, int, int]) -> list[int]:
        typ, count, at = field
        size = _SIZES[typ] * count
        if size > self.inline:
            self.f.seek(at)
            at = self._unpack(self.off_fmt, self.inline)
        self.f.seek(at)
        return list(struct.unpack(self.bo + _FORMATS[typ] * count, self.f.read(size)))

    def set_rational(self, field: tuple[int, int, int], value: Fraction) -> None:
        typ, count, at = field
        if typ != RATIONAL or count != 1:
            raise ValueError(f"resolution tag of type {typ} x {count}, expected one RATIONAL")
        if not self.big:  # 8 bytes do not fit in the 4-byte field: it holds their offset
            self.f.seek(at)
            at = self._unpack("I", 4)
        self.f.seek(at)
        self.f.write(struct.pack(self.bo + "II", value.numerator, value.denominator))


def _rational(value: float) -> Fraction:
    """``value`` as a TIFF RATIONAL (numerator and denominator below 2**32)."""
    limit = max(1, min(1 << 16, ((1 << 32) - 1) // (int(value) + 1)))
    return Fraction(value).limit_denominator(limit)


def set_level_resolutions(path: Path, mpp_x: float, mpp_y: float) -> int:
    """Rewrite XResolution / YResolution (px/cm) of every main IFD's SubIFD levels of ``path`` for their size
    (level 0: ``mpp_x`` x ``mpp_y`` um/px); returns the number of levels patched."""
    patched = 0
    with open(path, "r+b") as f:
        tiff = _Tiff(f)
        offset, seen = tiff.first, 0
        while offset and seen < MAX_IFDS:
            main, offset = tiff.entries(offset)
            seen += 1
            w0, h0 = tiff.values(main[WIDTH])[0], tiff.values(main[LENGTH])[0]
            for sub in tiff.values(main[SUBIFDS]) if SUBIFDS in main else []:
                level, _ = tiff.entries(sub)
                w, h = tiff.values(level[WIDTH])[0], tiff.values(level[LENGTH])[0]
                tiff.set_rational(level[X_RESOLUTION], _rational(1e4 / (mpp_x * w0 / w)))
                tiff.set_rational(level[Y_RESOLUTION], _rational(1e4 / (mpp_y * h0 / h)))
                patched += 1
    return patched


PHOTOMETRIC, COLORMAP = 262, 320
PALETTE = 3  # PhotometricInterpretation: palette colour


def _entry(tiff: _Tiff, tag: int, typ: int, count: int, value: bytes) -> bytes:
    """One IFD entry: ``value`` is the value field (inline data or an offset), padded to its size."""
    head = struct.pack(tiff.bo + "HH" + ("Q" if tiff.big else "I"), tag, typ, count)
    return head + value.ljust(tiff.inline, b"\0")


def add_palette(path: Path, colours: list[tuple[int, int, int]]) -> int:
    """Make every image of ``path``'s main IFD chain (8-bit, one sample) a palette image: Photometric = palette
    and a ColorMap where value ``i`` shows ``colours[i]`` (RGB 0..255; the other values black). Pixel values do
    not change. Each directory is rewritten at the end of the file with the two tags changed, and the offset that
    pointed to it is patched (the old directory stays as unused bytes). Returns the number of images changed."""
    table = [[0] * 256 for _ in range(3)]
    for i, rgb in enumerate(colours[:256]):
        for ch in range(3):
            table[ch][i] = int(rgb[ch]) * 257  # 8-bit to the ColorMap's 16-bit range
    changed = 0
    with open(path, "r+b") as f:
        tiff = _Tiff(f)
        pointer_at, offset = (8 if tiff.big else 4), tiff.first
        cmap = struct.pack(tiff.bo + "768H", *table[0], *table[1], *table[2])
        while offset and changed < MAX_IFDS:
            entries, nxt = tiff.entries(offset)
            f.seek(offset + (8 if tiff.big else 2))
            raw = f.read(len(entries) * tiff.entry)
            rows = {struct.unpack(tiff.bo + "H", raw[i * tiff.entry : i * tiff.entry + 2])[0]:
                    raw[i * tiff.entry : (i + 1) * tiff.entry] for i in range(len(entries))}
            f.seek(0, 2)
            cmap_at = f.tell() + (f.tell() & 1)  # word boundary
            f.seek(cmap_at)
            f.write(cmap)
            rows[PHOTOMETRIC] = _entry(tiff, PHOTOMETRIC, 3, 1, struct.pack(tiff.bo + "H", PALETTE))
            rows[COLORMAP] = _entry(tiff, COLORMAP, 3, 768,
                                    struct.pack(tiff.bo + ("Q" if tiff.big else "I"), cmap_at))
            ifd_at = f.tell() + (f.tell() & 1)
            f.seek(ifd_at)
            f.write(struct.pack(tiff.bo + tiff.count_fmt, len(rows)))
            f.write(b"".join(rows[tag] for tag in sorted(rows)))
            next_at = f.tell()
            f.write(struct.pack(tiff.bo + tiff.off_fmt, nxt))
            f.seek(pointer_at)
            f.write(struct.pack(tiff.bo + tiff.off_fmt, ifd_at))
            pointer_at, offset = next_at, nxt
            changed += 1
    return changed
