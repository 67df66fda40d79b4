"""Options and per-slide results of a segmentation run: validated once, here."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slidefuse.errors import InvalidPixelSize, UsageError
from slidefuse.numbers import finite_float, integer
from slidefuse.runtime.backends.registry import check_backend_choice
from slidefuse.runtime.bundle import Bundle
from slidefuse.runtime.coords import PLAUSIBLE_MPP  # um/px accepted without --force-mpp
from slidefuse.runtime.cores import usable_cores
from slidefuse.runtime.outputs.base import OutputOptions
from slidefuse.runtime.outputs.registry import DEFAULT_FORMATS
from slidefuse.runtime.qc.policy import check_mode, check_on_stain_mismatch
from slidefuse.runtime.tissue import TissueParams
from slidefuse.runtime.types import ON_DECODE_ERROR, OnDecodeError, Status

MAX_TILES = 10_000_000  # default limit of a slide's tile grid (--max-tiles)
MAX_CLAIM_TIMEOUT = 30 * 24 * 3600.0  # s: longer claim timeouts overflow the clocks and waits of the heartbeat


def default_workers() -> int:
    """Reader threads: two per usable core (one decoding in libvips while the other copies tiles out)."""
    return 2 * usable_cores()


def _check_sharing(shard: tuple[int, int] | None, claim_timeout: float) -> None:
    """The options that share a slide list among processes (they change no result)."""
    if shard is not None and not (len(shard) == 2 and 1 <= shard[1] and 0 <= shard[0] < shard[1]):
        raise UsageError(f"shard {shard!r}: expected (i, n) with 0 <= i < n", field="shard")
    finite_float(claim_timeout, field="claim_timeout", above=0, maximum=MAX_CLAIM_TIMEOUT,
                 what=f"a positive, finite number of seconds up to {MAX_CLAIM_TIMEOUT:.0f} (30 days)")


@dataclass(frozen=True)
class SegmentOptions:
    backend: str = "auto"  # backend registry name, or "auto": the best gated path here (`runtime.backends.auto`)
    backend_options: Mapping[str, Any] = field(default_factory=dict)  # passed to open_backend (e.g. threads)
    batch_size: int = 8  # tiles per backend call
    overlap: int | None = None  # tile overlap in model px; None = the bundle's recommendation (capped at T/2)
    tissue: TissueParams = TissueParams()  # tissue detection and tile selection parameters
    all_tiles: bool = False  # run every tile of the grid, not only those touching tissue
    mpp: float | None = None  # pixel size (um per level-0 px) of the slides that have none; others keep theirs
    override_mpp: float | None = None  # pixel size (um/px) replacing every slide's own (a list's mpp still wins)
    formats: frozenset[str] = DEFAULT_FORMATS  # output format names to write, parsed (registry.parse_formats)
    mask_mpp: float | None = None  # write mask.tif at this coarser um/px (None: the model's mpp)
    overwrite: bool = False  # redo slides whose outputs are already complete for this bundle
    workers: int = field(default_factory=default_workers)  # reader threads (default: two per usable core)
    stitch_threads: int = field(default_factory=usable_cores)  # threads taking tile interiors' argmax
    prefetch: int = 2  # batches read ahead of the engine
    preload_max_pixels: int = 16_000_000  # decode the whole slide at the model's mpp once when it is this small
    overlap_slides: bool = True  # plan the next slide and write the last one's outputs while a slide runs
    max_tiles: int = MAX_TILES  # refuse a slide whose tile grid at the model's mpp has more tiles than this
    force_mpp: bool = False  # accept slide pixel sizes outside PLAUSIBLE_MPP (from the file or `mpp`)
    shard: tuple[int, int] | None = None  # (i, n): take only slides i, i+n, i+2n, ... of the list (static split)
    claim_timeout: float = 120.0  # s without a heartbeat after which another process takes over a slide's claim
    wait: bool = True  # at the end of the list, wait for the slides other live processes hold (taking over any
    # whose holder stops); False leaves them to their holders at once
    geojson_frame: str = "qupath"  # mask.geojson coordinates: "qupath" (level 0 minus openslide.bounds) or "level0"
    on_decode_error: OnDecodeError = "fail"  # a tile the decoder reports as corrupt: "fail" the slide, or "warn"
    # (count it in report.json and go on). Not in the skip key: it decides whether outputs are written, never what
    # they hold
    roi: Path | None = None  # regions of interest of the one slide run (a QuPath GeoJSON export or a mask image,
    # see runtime.roi): only tiles touching them run, the mask is 0 outside them and report.json has their areas;
    # with several slides, a list CSV's roi column gives each its own
    qc: str = "default"  # quality control (`runtime.qc.policy`): "off", "flag" (report only), "default" (exclude pen
    # ink, flag blur and folds) or "exclude" (exclude all three)
    on_stain_mismatch: str = "warn"  # a slide whose stain is not the model's: "warn" (log, report, preview banner)
    # or "fail" the slide. Not in the skip key: it decides whether outputs are written, never what they hold
    outputs: OutputOptions = field(init=False, repr=False, compare=False)  # formats, mask_mpp and geojson_frame
    # as the output writers take them, built and checked once, here

    def __post_init__(self) -> None:
        """Every check of these options, once; messages name the field (the CLI maps fields to its flags)."""
        check_backend_choice(self.backend, self.backend_options)
        for name, minimum in (("batch_size", 1), ("workers", 1), ("stitch_threads", 1),
                              ("prefetch", 1), ("overlap", 0), ("max_tiles", 1)):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, integer(value, field=name, minimum=minimum))
        _check_sharing(self.shard, self.claim_timeout)
        check_mode(self.qc)
        check_on_stain_mismatch(self.on_stain_mismatch)
        object.__setattr__(self, "claim_timeout", finite_float(self.claim_timeout, field="claim_timeout"))
        if self.on_decode_error not in ON_DECODE_ERROR:
            raise UsageError(f"on_decode_error must be one of {', '.join(ON_DECODE_ERROR)}, "
                             f"got {self.on_decode_error!r}", field="on_decode_error")
        for name in ("mpp", "override_mpp", "mask_mpp"):
            value = getattr(self, name)
            if value is not None:  # numpy scalars become floats; bools, nan and inf are refused
                object.__setattr__(self, name, finite_float(
                    value, field=name, above=0, what="a positive, finite number of microns per pixel",
                    error=InvalidPixelSize))
        check_plausible_mpp(self.mpp, "mpp", self.force_mpp)
        if self.roi is not None:
            object.__setattr__(self, "roi", _roi_path(self.roi))
        check_plausible_mpp(self.override_mpp, "override_mpp", self.force_mpp)
        outputs = OutputOptions(formats=self.formats, mask_mpp=self.mask_mpp, geojson_frame=self.geojson_frame)
        object.__setattr__(self, "outputs", outputs)

    def to_dict(self) -> dict[str, Any]:
        """The options as recorded in report.json ("run.options"): every field but the derived `outputs`."""
        d = dataclasses.asdict(self)
        del d["outputs"]
        d["formats"] = sorted(self.formats)
        d["backend_options"] = dict(self.backend_options)
        d["roi"] = None if self.roi is None else str(self.roi)
        return d


def _roi_path(value: Any) -> Path:
    """A regions file given as a path (str or os.PathLike); UsageError naming `roi` otherwise."""
    import os

    if isinstance(value, bool) or not isinstance(value, str | os.PathLike) or not str(value).strip():
        raise UsageError(f"roi {value!r}: expected the path of a regions file (a QuPath GeoJSON export or a mask "
                         "image)", field="roi")
    return Path(value)


def effective_overlap(bundle: Bundle, options: SegmentOptions) -> int:
    """Overlap in model px: the option, else the bundle's recommendation capped at half a tile."""
    t = bundle.manifest.tile_size
    if options.overlap is not None:
        if options.overlap > t // 2:
            raise UsageError(f"overlap {options.overlap} px is more than half of this model's {t} px tile; "
                             f"choose 0..{t // 2}", field="overlap")
        return options.overlap
    return min(max(int(bundle.manifest.overlap), 0), t // 2)


def check_plausible_mpp(mpp: float | None, field: str | None, force: bool) -> None:
    """Refuse a slide pixel size outside PLAUSIBLE_MPP (um/px) unless `force` (--force-mpp)."""
    lo, hi = PLAUSIBLE_MPP
    if mpp is not None and not force and not lo <= mpp <= hi:
        name = field or "the slide's pixel size"
        raise InvalidPixelSize(f"{name} {mpp:g} um/px is outside the plausible {lo:g}..{hi:g} um/px of a slide; "
                               "check the value (override_mpp=<um/px> replaces the file's) or pass force_mpp=True "
                               "to use it anyway", field=field)


@dataclass
class SlideResult:
    """What happened to one slide."""

    slide: Path  # the slide file as given
    status: Status  # OK, SKIPPED (outputs already complete for this skip key), FAILED, CLAIMED (done or being
    # done by another process sharing OUT: not recorded in run.json by this one), or CLAIM_LOST (started here,
    # then taken over by another process, which does it)
    out_dir: Path | None = None  # OUT/<slide stem>
    error: str | None = None  # one-line reason when failed
    outputs: dict[str, Path] = field(default_factory=dict)  # format -> written file
    seconds: float = 0.0  # wall time spent on the slide
    tile_counts: dict[str, int] = field(default_factory=dict)  # grid / tissue / run
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    decode_errors: int | None = None  # tiles the decoders reported as corrupt (None: the slide was not read)
    holder: str | None = None  # CLAIMED, CLAIM_LOST: host:pid of the process that held the slide, when known

    @property
    def ok(self) -> bool:
        return self.status != Status.FAILED


