"""What the decoders say about corrupt tile data: captured, traced to the stored tile, counted per slide.

JPEG has no checksum: damaged entropy data decodes to wrong pixels, and libjpeg says so only as a *warning*
("Corrupt JPEG data: premature end of data segment", "... extraneous bytes before marker"). Where each
warning goes (libvips 8.14):

- JPEG tiles of a TIFF / OME-TIFF, which libvips' tiffload decodes itself, and JPEG frames of a DICOM series
  (jpegload): the warning is appended to libvips' error buffer and the decode *succeeds*; tiffload ignores
  ``fail_on`` for it. So after each read this module polls the buffer (one C call; empty on a clean slide).
- tiles libtiff decodes (its "JPEGLib: ..." messages): GLib warnings, which pyvips forwards to the logger
  "pyvips"; a handler here collects them.
- OpenSlide (SVS, NDPI, ...): treats the warning as an error, which is sticky: the read fails, and so does
  every later read of that slide. Such a slide always fails (see `view.ScaledView`), whatever the policy.

The error buffer is one per process, so a message cannot tell which thread's tile it came from. It is traced
instead: every read in progress registers its box (`watch`), and when messages turn up, the stored tiles
under every box then in progress are decoded one by one, each on its own with ``fail_on="warning"``, which
names exactly the tiles that are damaged (`SlideReader._source_tiles`). A reader that cannot list its stored
tiles records the box that was being read. Each bad tile is recorded once per slide (`DecodeLog`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import pyvips

from slidefuse.errors import SlideReadError
from slidefuse.runtime.types import ON_DECODE_ERROR, BadTile, DecodeErrors, OnDecodeError

log = logging.getLogger(__name__)

MAX_LISTED = 100  # bad tiles listed in report.json (all of them are counted)
# Message prefixes of decoder reports in libvips' error buffer and in pyvips' log records.
_DECODER_MARKS = ("VipsJpeg:", "JPEGLib", "Corrupt JPEG", "Premature end of JPEG", "jp2k", "openjpeg",
                  "TIFFReadTile", "TIFFReadEncodedTile", "TIFFFillTile")

L0Box = tuple[int, int, int, int]  # (l0_x, l0_y, width, height) in level-0 px
LevelBox = tuple[int, int, int, int]  # (level_x, level_y, width, height) in px of one pyramid level


class SlideDecodeError(SlideReadError):
    """A slide whose stored image data the decoder reported as corrupt (policy "fail"); `tile` is the first."""

    def __init__(self, message: str, *, path: object, tile: BadTile) -> None:
        super().__init__(message)
        self.path, self.tile = path, tile


@dataclass(frozen=True)
class SourceTile:
    """One stored tile (or frame) of a pyramid level, as the file holds it."""

    key: tuple[int, int, int]  # (level, column, row)
    l0_box: L0Box  # the tile's area in level-0 px (clipped to the slide)
    encoded: Callable[[], bytes | None]  # its bytes as a standalone image file (JPEG / JPEG 2000), or None


class TileSource(Protocol):
    """What tracing needs of a slide reader (`SlideReader` implements it)."""

    decode_log: DecodeLog

    def _source_tiles(self, level: int, level_box: LevelBox) -> list[SourceTile] | None: ...

    def _l0_box(self, level: int, level_box: LevelBox) -> L0Box: ...


class DecodeLog:
    """The bad tiles of one slide, thread-safe: each recorded once; `policy` "fail" makes reads raise."""

    def __init__(self, path: object, policy: OnDecodeError = "fail") -> None:
        if policy not in ON_DECODE_ERROR:
            raise ValueError(f"on_decode_error must be one of {', '.join(ON_DECODE_ERROR)}, got {policy!r}")
        self.path = path
        self.policy: OnDecodeError = policy
        self._lock = threading.Lock()
        self._tiles: dict[tuple[int, ...], BadTile] = {}
        self._checked: set[tuple[int, int, int]] = set()  # stored tiles decoded on their own (good or bad)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._tiles)

    def add(self, key: tuple[int, ...], tile: BadTile) -> None:
        with self._lock:
            if key in self._tiles:
                return
            self._tiles[key] = tile
            first = len(self._tiles) == 1
        log.log(logging.WARNING if first else logging.DEBUG, "%s", describe(self.path, tile))

    def first_unchecked(self, tiles: list[SourceTile]) -> list[SourceTile]:
        """The tiles not traced before (and marks them as traced)."""
        with self._lock:
            todo = [t for t in tiles if t.key not in self._checked]
            self._checked.update(t.key for t in todo)
        return todo

    def any_recorded(self, tiles: list[SourceTile]) -> bool:
        """Whether one of `tiles` is already recorded as bad (a later message about it is no new finding)."""
        with self._lock:
            return any(t.key in self._tiles for t in tiles)

    def summary(self) -> DecodeErrors:
        """Count and the first MAX_LISTED bad tiles, in the order found."""
        with self._lock:
            tiles = list(self._tiles.values())
        return DecodeErrors(len(tiles), tuple(tiles[:MAX_LISTED]))

    def check(self) -> None:
        """Raise SlideDecodeError naming the first bad tile when the policy is "fail" and there is one."""
        if self.policy != "fail":
            return
        with self._lock:
            first = next(iter(self._tiles.values()), None)
        if first is not None:
            raise SlideDecodeError(describe(self.path, first) + "; the file is damaged: re-copy or re-export it "
                                   "(on_decode_error=warn segments it anyway, counting the bad tiles)",
                                   path=self.path, tile=first)


def describe(path: object, tile: BadTile) -> str:
    """One line naming a bad tile: file, level-0 box, the decoder's message."""
    return (f"{path}: corrupt image data in the tile at level-0 x={tile.l0_x}, y={tile.l0_y} "
            f"({tile.width} x {tile.height} px, level {tile.level}): {tile.message}")


# ------------------------------------------------------------------------------------------------ capture


class _Messages(logging.Handler):
    """Decoder messages from both channels (libvips' error buffer, pyvips' log records), drained together."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._pending: list[str] = []
        self._seen = b""  # the error buffer's text already looked at (left there: it held no decoder message)
        self.guard = threading.RLock()  # re-entered when a check logs through pyvips

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if any(mark in text for mark in _DECODER_MARKS):
            with self.guard:
                self._pending.append(text.removeprefix("VIPS: ").strip())

    def drain(self) -> list[str]:
        """Decoder messages reported since the last drain (call with `guard` held)."""
        out, self._pending = self._pending, []
        text = bytes(pyvips.ffi.string(pyvips.vips_lib.vips_error_buffer()))
        if text and text != self._seen:
            new = text[len(self._seen):] if text.startswith(self._seen) else text
            lines = [ln.strip() for ln in new.decode("utf-8", "replace").splitlines()]
            found = [ln for ln in lines if any(mark in ln for mark in _DECODER_MARKS)]
            if found:
                pyvips.vips_lib.vips_error_clear()
                self._seen = b""
                out.extend(found)
            else:
                self._seen = text
        return out

    def pending(self) -> bool:
        """Whether a drain may find something: cheap enough to call after every read."""
        return bool(self._pending) or bool(pyvips.vips_lib.vips_error_buffer()[0] != b"\x00")


_MESSAGES = _Messages()
logging.getLogger("pyvips").addHandler(_MESSAGES)


@dataclass(frozen=True)
class _Read:
    source: TileSource
    level: int
    level_box: LevelBox


_INFLIGHT: dict[int, _Read] = {}
_TOKENS = itertools.count()


@contextlib.contextmanager
def watch(source: TileSource, level: int, level_box: LevelBox) -> Iterator[None]:
    """Around one read of ``level_box`` (level px, ``level``) of ``source``: afterwards, trace any decoder
    message to its tiles, and raise SlideDecodeError when ``source``'s policy is "fail" and it has bad tiles."""
    token = next(_TOKENS)
    _INFLIGHT[token] = _Read(source, level, level_box)
    try:
        yield
        if _MESSAGES.pending():
            with _MESSAGES.guard:
                messages = _MESSAGES.drain()
                if messages:
                    _trace(messages, _INFLIGHT[token], list(_INFLIGHT.values()))
    finally:
        del _INFLIGHT[token]
    source.decode_log.check()


def _trace(messages: list[str], own: _Read, reads: list[_Read]) -> None:
    """Decode each stored tile under the reads in progress on its own; record those that fail. Messages that
    no tile accounts for are recorded against the box ``own`` was reading."""
    found = False
    untraceable = False
    for read in reads:
        tiles = read.source._source_tiles(read.level, read.level_box)
        if tiles is None:
            untraceable = untraceable or read is own
            continue
        # a tile recorded before explains the message: two reads of overlapping boxes (or two threads missing
        # libvips' tile cache at once) decode the same bad tile, and each decode reports it again
        found = found or read.source.decode_log.any_recorded(tiles)
        for tile in read.source.decode_log.first_unchecked(tiles):
            message = check_encoded(tile.encoded())
            if message is not None:
                read.source.decode_log.add(tile.key, BadTile(*tile.l0_box, tile.key[0], message))
                found = True
    if not found:
        x, y, w, h = own.source._l0_box(own.level, own.level_box)
        note = "" if untraceable else " (not reproduced on a single stored tile)"
        own.source.decode_log.add((own.level, x, y, w, h), BadTile(x, y, w, h, own.level, messages[0] + note))


def check_encoded(data: bytes | None) -> str | None:
    """Decode one stored tile on its own with libvips, any decoder warning an error: None when it decodes
    cleanly (or cannot be checked), else the decoder's message."""
    if not data:
        return None
    try:
        image = pyvips.Image.new_from_buffer(data, "", fail_on="warning")
        pyvips.Region.new(image).fetch(0, 0, image.width, image.height)  # in this thread (no worker warnings)
    except pyvips.Error as exc:
        lines = [ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()]
        decoder = [ln for ln in lines if any(mark in ln for mark in _DECODER_MARKS)]
        return (decoder or lines or [str(exc).strip()])[0]
    return None


def jpeg_with_tables(tile: bytes, tables: bytes | None) -> bytes:
    """A TIFF JPEG tile (SOI ... EOI, maybe without its tables) as a standalone JPEG file: the JPEGTables'
    markers inserted after its SOI."""
    if not tables or len(tables) < 4 or tile[:2] != b"\xff\xd8":
        return tile
    return tile[:2] + tables[2:-2] + tile[2:]
