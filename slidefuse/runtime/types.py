"""Plain data passed between the runtime's stages (reader -> pipeline/stitcher -> outputs), the file names
they share and the status vocabulary of a run.

Coordinate frames are in the names: `l0_` = slide level-0 pixels; `model_` / `mask_` = pixels at the
bundle's microns per pixel (the frame of tiles and of the stitched mask); `thumb_` = thumbnail pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np

RAW_NAME = "mask.raw.tmp"  # the stitcher's raw class-index file inside a slide's output folder (removed after)
RUN_LOG = "run.json"  # the batch's run log in the output root (see runtime.segment.runlog)
OnDecodeError = Literal["fail", "warn"]  # what a tile the decoder reports as corrupt does to its slide
ON_DECODE_ERROR: tuple[OnDecodeError, ...] = ("fail", "warn")


class Status(StrEnum):
    """What happened to a slide in a run; str-valued, so it compares equal to and is stored as its value."""

    OK = "ok"  # segmented: its outputs were written by this run
    SKIPPED = "skipped"  # its outputs were already complete for the same skip key
    FAILED = "failed"  # it failed (the result carries the one-line reason)
    CLAIMED = "claimed"  # done, or being done, by another process sharing the output folder
    CLAIM_LOST = "claim_lost"  # this process started it, then another took its claim over (and does it)


@dataclass(frozen=True)
class LevelInfo:
    width: int  # level width in px
    height: int  # level height in px
    downsample: float  # level-0 px per level px


@dataclass(frozen=True)
class ColourPipeline:
    """How a slide's stored pixels became the sRGB uint8 pixels the model sees (recorded in reports)."""

    decoder: str  # "openslide" or "libtiff" (libvips' loader underneath), or "memory"
    stored: tuple[str, ...]  # per pyramid level, finest first: compression and photometric as stored
    conversions: tuple[str, ...]  # applied in order (e.g. "jfif-ycbcr-to-rgb"); "level k: ..." when levels differ
    icc: str  # what happened to an embedded ICC profile
    color_transform: str = "none"  # the bundle's choice: "none" or "icc-to-srgb"


@dataclass(frozen=True)
class BadTile:
    """A stored tile whose data the decoder reported as corrupt (`slide.decode`), in level-0 px."""

    l0_x: int  # left edge, level-0 px
    l0_y: int  # top edge, level-0 px
    width: int  # level-0 px
    height: int  # level-0 px
    level: int  # pyramid level the tile belongs to
    message: str  # what the decoder said


@dataclass(frozen=True)
class DecodeErrors:
    """A slide's bad tiles: how many, and the first ones found (at most `decode.MAX_LISTED`)."""

    count: int  # bad tiles found
    tiles: tuple[BadTile, ...] = ()  # the first ones, in the order found


@dataclass(frozen=True)
class SlideInfo:
    path: Path  # the slide file
    width: int  # level-0 width in px
    height: int  # level-0 height in px
    mpp: float  # microns per level-0 pixel in use (after any --mpp override)
    mpp_source: str  # where `mpp` came from: "openslide", "tiff", "ome", "user"
    vendor: str  # OpenSlide vendor ("aperio", ...) or "tiff" / "ome-tiff"
    loader: str  # libvips loader used: "openslideload" or "tiffload"
    levels: tuple[LevelInfo, ...]  # pyramid levels, finest first
    objective_power: float | None = None  # nominal magnification, where the file says
    properties: dict[str, str] = field(default_factory=dict)  # a few raw metadata entries for reports
    colour: ColourPipeline | None = None  # how pixels are decoded and converted (None: not recorded)
    decode_errors: DecodeErrors | None = None  # what the decoders reported while the slide was read (None: not
    # recorded: the slide has not been read yet)


@dataclass(frozen=True)
class RegionPixels:
    """The mask pixels inside one region of interest."""

    index: int  # the region's feature index in its file, from 0
    name: str  # its name (see `runtime.roi.region_name`)
    pixels: int  # mask pixels inside it (pixel centres, model frame)
    class_pixels: np.ndarray  # int64 [C]: of those, the pixels of each class
    feature_id: str | None = None  # the feature's GeoJSON "id", when it has one


@dataclass(frozen=True)
class RegionsResult:
    """The regions a slide was restricted to, and the pixels of each class inside each one."""

    file: str  # the regions file as given
    kind: str  # "geojson" or "mask"
    sha256: str  # of the file's bytes
    offset_l0: tuple[float, float]  # origin of the GeoJSON's coordinate frame in level-0 px
    regions: tuple[RegionPixels, ...]


@dataclass
class MaskResult:
    """What the stitcher hands to the output writers for one slide (the raw file is `out_dir / RAW_NAME`)."""

    raw_path: Path  # uint8 class indices, row-major, mask_width * mask_height bytes, at `mpp`
    mask_width: int  # mask width in px
    mask_height: int  # mask height in px
    mpp: float  # microns per mask pixel (the bundle's mpp)
    class_pixels: np.ndarray  # int64 [C]: mask pixel count per class (class 0 includes non-tissue)
    tissue: np.ndarray  # bool [thumb_h, thumb_w]: tissue detected on the thumbnail
    thumbnail: np.ndarray  # uint8 [thumb_h, thumb_w, 3] RGB slide thumbnail (same frame as `tissue`)
    tile_counts: dict[str, int]  # "grid" (all tiles), "tissue" (tiles touching tissue), "run" (inferred)
    timings: dict[str, float]  # seconds per stage: read, tissue, inference, stitch, write, total
    backend: dict[str, Any]  # backend.info(): what ran
    extra: dict[str, Any] = field(default_factory=dict)  # anything else worth reporting (tile, overlap, ...)
    regions: RegionsResult | None = None  # areas per region of interest (None: the whole slide ran)
    probs_path: Path | None = None  # uint8 [mask_height, mask_width, C] interleaved round(p * 255) blended class
    # probabilities (see runtime.stitch_probs), when an output needs them; None: not written

    def scratch_files(self) -> tuple[Path, ...]:
        """The stitcher's raw files (the mask, and the probabilities when written): removed after the outputs."""
        return (self.raw_path,) if self.probs_path is None else (self.raw_path, self.probs_path)

    def remove_scratch(self) -> None:
        """Remove the stitcher's raw files (those that exist)."""
        for path in self.scratch_files():
            path.unlink(missing_ok=True)
    qc: Any = None  # slidefuse.runtime.qc.QCResult: the QC maps and stain check (None: QC did not run)
