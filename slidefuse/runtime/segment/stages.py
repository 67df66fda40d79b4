"""A slide's three stages: `plan_slide` (open, tissue, tiles), `infer_slide` (pipeline + stitcher) and
`finish_slide` (outputs); `segment_slide` runs them in turn. Only `infer_slide` touches the backend.

A plan may carry a fence (`slidefuse.atomic.Fence`, the slide's claim when processes share OUT): the raw mask
and every temporary then carry its tag, and the removal of others' temporaries, each rename into place and
report.json are checked against it (raising e.g. `ClaimLost`, which stops the slide without a trace of it)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from slidefuse.atomic import Fence, fenced, scratch_path
from slidefuse.errors import UsageError
from slidefuse.runtime import interrupt
from slidefuse.runtime.backends.base import Backend
from slidefuse.runtime.bundle import Bundle
from slidefuse.runtime.grid import TileGrid, TileRC, select_tiles
from slidefuse.runtime.keep import CoarseKeep, KeepMask, combine
from slidefuse.runtime.pipeline import PipelineOptions, run_pipeline
from slidefuse.runtime.progress import NullProgress, Progress
from slidefuse.runtime.qc.masked import MaskedView, glass_colour
from slidefuse.runtime.qc.policy import check_mode
from slidefuse.runtime.qc.run import QCResult, run_qc
from slidefuse.runtime.segment.inputs import check_out_folder, slide_stem
from slidefuse.runtime.segment.options import SegmentOptions, SlideResult, check_plausible_mpp, effective_overlap
from slidefuse.runtime.segment.skip import result_key, slide_identity
from slidefuse.runtime.slide.reader import MAX_DECODE_PIXELS
from slidefuse.runtime.stitch import Stitcher
from slidefuse.runtime.tissue import TissueParams, binary_open, detect_tissue, remove_small_objects
from slidefuse.runtime.types import MaskResult, RegionsResult, SlideInfo, Status

if TYPE_CHECKING:
    from slidefuse.runtime.roi_raster import SlideRegions

log = logging.getLogger(__name__)


def check_run(bundle: Bundle, options: SegmentOptions, out_root: Path | None = None) -> None:
    """What can be refused before any slide is opened: an overlap or a mask pixel size this model cannot
    take (UsageError naming the field), and an output folder inside a model bundle."""
    effective_overlap(bundle, options)
    if out_root is not None:
        check_out_folder(Path(out_root))
    model_mpp = bundle.manifest.mpp
    if options.mask_mpp is not None and options.mask_mpp < model_mpp * (1 - 1e-6):
        raise UsageError(f"mask_mpp {options.mask_mpp:g} um/px is finer than this model's {model_mpp:g} um/px; "
                         f"pass a value >= {model_mpp:g} or leave it out", field="mask_mpp")


def check_planning_bounds(slide: Any, view: Any, grid: TileGrid, options: SegmentOptions,
                          params: TissueParams) -> None:
    """Refuse, before anything is decoded, a slide whose tile grid exceeds `options.max_tiles`, or whose
    tissue thumbnail would have to decode more than MAX_DECODE_PIXELS of one level."""
    name = Path(slide.info.path).name
    if grid.n_tiles > options.max_tiles:
        raise UsageError(f"{name}: {grid.n_tiles:,} tiles ({grid.n_cols:,} x {grid.n_rows:,}) at {view.mpp:g} um/px "
                         f"exceed max_tiles={options.max_tiles}; check the slide's pixel size ({slide.info.mpp:g} "
                         f"um/px from {slide.info.mpp_source}; override_mpp=<um/px> replaces it) or pass a larger "
                         "max_tiles=<tiles>", field="max_tiles")
    decode = slide.scaled(slide.thumbnail_mpp(params.thumb_max_side)).source_pixels()
    if decode > MAX_DECODE_PIXELS:
        raise UsageError(f"{name}: its thumbnail would decode {decode / 1e9:,.0f} gigapixels of one level, over the "
                         f"limit of {MAX_DECODE_PIXELS / 1e9:g} gigapixels: the file has no reduced levels; make "
                         "a pyramid (e.g. vips tiffsave SLIDE OUT.tif --tile --pyramid) and pass that")


def find_tissue(slide: Any, params: TissueParams) -> tuple[np.ndarray, np.ndarray, float]:
    """Thumbnail and tissue: (uint8 [h, w, 3] RGB thumbnail, bool [h, w] tissue mask, thumb um/px)."""
    thumb_mpp = float(slide.thumbnail_mpp(params.thumb_max_side))
    thumb = slide.thumbnail(params.thumb_max_side)
    tissue = detect_tissue(thumb, params, thumb_mpp=thumb_mpp)
    return thumb, tissue, thumb_mpp


def plan_tiles(
    grid: TileGrid, tissue: np.ndarray, mpp: float, thumb_mpp: float, options: SegmentOptions
) -> tuple[list[TileRC], int]:
    """(tiles to run in row-major order, number of tiles touching tissue)."""
    touching = select_tiles(grid, tissue, mpp, thumb_mpp, options.tissue.tile_min_fraction)
    if options.all_tiles:
        return list(grid.tiles()), len(touching)
    return touching, len(touching)


@dataclass
class PlannedSlide:
    """A slide opened, its tissue found and its tiles chosen (stage 1 of 3). Holds the open slide."""

    slide_path: Path
    out_dir: Path
    slide: Any  # the open SlideReader; closed by `infer_slide`
    view: Any  # the slide at the model's um/px (ScaledView); None once closed
    grid: TileGrid
    tiles: list[TileRC]
    n_tissue: int
    thumb: np.ndarray
    tissue: np.ndarray
    thumb_mpp: float
    timings: dict[str, float]
    seconds: float  # time this slide's own stages took so far
    key: dict[str, Any] = field(default_factory=dict)  # the skip key (skip.result_key), made before opening
    fence: Fence | None = None  # who writes the slide's files, and whether it still may (None: unfenced)
    keep: KeepMask | None = None  # pixels the mask keeps (regions of interest, QC exclusions); None: all
    regions: SlideRegions | None = None  # the regions of interest placed on this slide; None: the whole slide
    n_roi: int | None = None  # tiles touching tissue inside the regions (None: no regions)
    qc: QCResult | None = None  # the QC maps and stain check (None: QC off)

    def close(self) -> None:
        """Close the slide and drop the view: its libvips image (with the decoded tiles libvips caches for
        it, more for wider slides) is freed now, not when the last reference to this plan goes."""
        self.slide.close()
        self.view = None


@dataclass
class StitchedSlide:
    """A slide's tiles run and stitched into the raw mask on disk (stage 2 of 3); the slide is closed."""

    slide_path: Path
    out_dir: Path
    info: SlideInfo
    result: MaskResult
    seconds: float
    key: dict[str, Any] = field(default_factory=dict)  # the skip key, recorded in report.json (run.skip_key)
    fence: Fence | None = None  # the plan's fence, for the outputs


class QCOptions(Protocol):
    """The options the QC stage reads (SegmentOptions and the embed command's EmbedOptions both have them)."""

    @property
    def qc(self) -> str: ...

    @property
    def on_stain_mismatch(self) -> str: ...

    @property
    def tissue(self) -> TissueParams: ...


def quality_control(slide_path: Path, slide: Any, view: Any, bundle: Bundle, options: QCOptions,
                    thumb: np.ndarray, tissue: np.ndarray, thumb_mpp: float,
                    timings: dict[str, float]) -> tuple[QCResult, np.ndarray, KeepMask | None]:
    """QC after tissue detection (`slidefuse.runtime.qc`): (its result, the tissue left once the excluded regions
    are taken out, the keep mask that cuts them out of the mask). With qc "off", the stain check alone runs."""
    t0 = time.perf_counter()
    m = bundle.manifest
    qc = run_qc(thumb, tissue, thumb_mpp, check_mode(options.qc), slide=slide, view=view, model_mpp=m.mpp,
                model_stain=m.stain, on_stain_mismatch=options.on_stain_mismatch, name=Path(slide_path).name)
    timings["qc"] = time.perf_counter() - t0
    excluded = qc.excluded
    if not excluded.any():
        return qc, tissue, None
    log.info("%s: QC excludes %.1f%% of the tissue (%s)", Path(slide_path).name,
             100 * float((excluded & tissue).sum()) / max(int(tissue.sum()), 1),
             ", ".join(n for n, a in qc.actions.items() if a == "exclude" and qc.maps[n].mask.any()))
    return qc, tissue_left(tissue, excluded, thumb_mpp, options.tissue), CoarseKeep(~excluded, thumb_mpp / m.mpp)


def tissue_left(tissue: np.ndarray, excluded: np.ndarray, thumb_mpp: float, params: TissueParams) -> np.ndarray:
    """bool [h, w]: ``tissue`` without the ``excluded`` regions, cleaned as tissue detection cleans its mask
    (the opening and the smallest pieces), so the frayed edge of an excluded stroke is not left as tissue."""
    left = binary_open(tissue & ~excluded, params.opening_radius_um / thumb_mpp)
    return remove_small_objects(left, max(1, int(params.min_object_fraction * left.size)))


def plan_slide(slide_path: Path, bundle: Bundle, options: SegmentOptions, out_dir: Path, *,
               reader: Any = None, fence: Fence | None = None) -> PlannedSlide:
    """Stage 1: open the slide, find tissue on a thumbnail, lay the grid and choose the tiles. Touches no
    backend, so it can run on a background thread while another slide is inferred. `reader`: an already open
    SlideReader (e.g. an `InMemorySlide` from the Python API) used instead of opening `slide_path`; it is
    closed with the plan. `fence`: the writer's fence for the next stages (see the module docstring)."""
    from slidefuse.runtime.slide import open_slide

    t_start = time.perf_counter()
    m = bundle.manifest
    timings: dict[str, float] = {}
    key: dict[str, Any] = {}  # an open reader (e.g. an in-memory array) has no file to key
    if reader is None:
        key = result_key(bundle, options, slide_identity(slide_path))  # refuses a FIFO or folder unopened
    slide = reader if reader is not None else open_slide(Path(slide_path), mpp=options.override_mpp,
                                                         default_mpp=options.mpp,
                                                         colour_transform=bundle.manifest.color_transform,
                                                         on_decode_error=options.on_decode_error)
    try:
        check_plausible_mpp(slide.info.mpp, None, options.force_mpp)
        view = slide.scaled(m.mpp)
        overlap = effective_overlap(bundle, options)
        grid = TileGrid(view.width, view.height, m.tile_size, overlap, margin=overlap)
        check_planning_bounds(slide, view, grid, options, options.tissue)
        regions = _load_regions(options, slide, grid, timings)
        interrupt.check()
        t0 = time.perf_counter()
        thumb, tissue, thumb_mpp = find_tissue(slide, options.tissue)
        timings["tissue"] = time.perf_counter() - t0
        interrupt.check()
        t0 = time.perf_counter()
        if view.preload(options.preload_max_pixels):
            log.info("%s: %d x %d px at %g um/px decoded once into memory (small slide)",
                     Path(slide_path).name, view.width, view.height, m.mpp)
        timings["preload"] = time.perf_counter() - t0
        interrupt.check()
        qc, tissue, keep = quality_control(slide_path, slide, view, bundle, options, thumb, tissue, thumb_mpp, timings)
        if keep is not None:  # the model sees glass where QC excluded something (`runtime.qc.masked`)
            view = MaskedView(view, qc.excluded, thumb_mpp / m.mpp, glass_colour(thumb, qc.tissue, qc.excluded))
        interrupt.check()
        tiles, n_tissue = plan_tiles(grid, tissue, m.mpp, thumb_mpp, options)
        plan = PlannedSlide(Path(slide_path), Path(out_dir), slide, view, grid, tiles, n_tissue, thumb, tissue,
                            thumb_mpp, timings, 0.0, key, fence, keep=keep, qc=qc)
        if regions is not None:
            restrict_to_regions(plan, regions, options)
    except BaseException:
        slide.close()
        raise
    grid, tiles = plan.grid, plan.tiles
    log.info("%s: %d x %d px at %g um/px, %d of %d tiles to run (%d x %d grid, tile %d, overlap %d)",
             Path(slide_path).name, grid.width, grid.height, m.mpp, len(tiles), grid.n_tiles, grid.n_rows,
             grid.n_cols, grid.tile, grid.overlap)
    plan.seconds = time.perf_counter() - t_start
    return plan


def _load_regions(options: SegmentOptions, slide: Any, grid: TileGrid,
                  timings: dict[str, float]) -> SlideRegions | None:
    """The regions of interest of `options.roi` placed on the slide (`roi_raster.SlideRegions`; a RoiError names
    the file and the feature), or None without them."""
    if options.roi is None:
        return None
    from slidefuse.runtime.roi_raster import load_regions

    t0 = time.perf_counter()
    regions = load_regions(options.roi, slide.info, (grid.width, grid.height), options.geojson_frame)
    timings["regions"] = time.perf_counter() - t0
    return regions


def restrict_to_regions(plan: PlannedSlide, regions: SlideRegions, options: SegmentOptions) -> None:
    """Restrict a plan to `regions` (`roi_raster.SlideRegions`): ANDed into the thumbnail's tissue mask before the
    tiles are chosen again (with `all_tiles`: every tile touching a region), and combined into the plan's keep
    mask, so the mask is 0 outside them. `plan.n_roi`: the tiles touching tissue inside the regions."""
    t0 = time.perf_counter()
    m_mpp = plan.view.mpp
    inside = regions.thumb_mask(plan.tissue.shape)
    plan.tissue = plan.tissue & inside
    touching = select_tiles(plan.grid, plan.tissue, m_mpp, plan.thumb_mpp, options.tissue.tile_min_fraction)
    plan.n_roi = len(touching)
    plan.tiles = select_tiles(plan.grid, inside, m_mpp, plan.thumb_mpp) if options.all_tiles else touching
    plan.keep = combine(plan.keep, regions.keep())
    plan.regions = regions
    plan.timings["regions"] = plan.timings.get("regions", 0.0) + time.perf_counter() - t0


def _fenced(fence: Fence | None) -> contextlib.AbstractContextManager[None]:
    return fenced(fence) if fence is not None else contextlib.nullcontext()


def infer_slide(
    plan: PlannedSlide, bundle: Bundle, options: SegmentOptions, backend: Backend, progress: Progress
) -> StitchedSlide:
    """Stage 2: stream the planned tiles through the backend into the stitcher (disk-backed raw mask in the
    output folder). Closes the slide; removes the raw mask when it fails. Under the plan's fence, the raw mask
    carries its tag and others' temporaries are removed only after its check."""
    with _fenced(plan.fence):
        return _infer_slide(plan, bundle, options, backend, progress)


def _infer_slide(plan: PlannedSlide, bundle: Bundle, options: SegmentOptions, backend: Backend,
                 progress: Progress) -> StitchedSlide:
    from slidefuse.runtime.outputs import clean_temporaries, needs_probabilities

    t_start = time.perf_counter()
    m = bundle.manifest
    grid, tiles, timings = plan.grid, plan.tiles, plan.timings
    raw_path = scratch_path(plan.out_dir, "mask.raw")  # mask.raw.tmp, or mask.raw.<tag>.tmp when fenced
    probs_path = scratch_path(plan.out_dir, "probs.raw") if needs_probabilities(options.outputs) else None
    try:
        plan.out_dir.mkdir(parents=True, exist_ok=True)
        clean_temporaries(plan.out_dir)  # what a killed run (or a writer that lost its claim) left
        progress.update(0, len(tiles))
        with Stitcher(grid, m.num_classes, raw_path, threads=options.stitch_threads, keep=plan.keep,
                      probs_path=probs_path) as stitcher:
            stats = run_pipeline(
                plan.view, grid, tiles, backend, stitcher,
                PipelineOptions(batch_size=options.batch_size, workers=options.workers, prefetch=options.prefetch),
                progress=progress.update,
            )
            t0 = time.perf_counter()
            stitcher.finish()
            stats.stitch += time.perf_counter() - t0
        regions = _count_regions(plan, raw_path, m.num_classes)
        plan.slide.decode_log.check()  # policy "fail": a report traced after the slide's last read fails it too
        timings.update(stats.as_dict())
        result = MaskResult(
            raw_path=raw_path,
            mask_width=grid.width,
            mask_height=grid.height,
            mpp=m.mpp,
            class_pixels=stitcher.class_pixels.copy(),
            tissue=plan.tissue,
            thumbnail=plan.thumb,
            tile_counts=_tile_counts(plan),
            timings=timings,
            backend=backend.info().to_dict(),
            qc=plan.qc,
            extra={
                "tile": grid.tile, "overlap": grid.overlap, "stride": grid.stride, "margin": grid.margin,
                "grid_rows": grid.n_rows, "grid_cols": grid.n_cols, "batch_size": options.batch_size,
                "workers": options.workers,
                "stitch_threads": options.stitch_threads, "batches": stats.batches, "thumb_mpp": plan.thumb_mpp,
                "all_tiles": options.all_tiles, "stitcher_bytes": stitcher.accumulator_bytes(),
            },
            regions=regions,
            probs_path=probs_path,
        )
    except BaseException:
        raw_path.unlink(missing_ok=True)
        if probs_path is not None:
            probs_path.unlink(missing_ok=True)
        raise
    finally:
        plan.close()
    seconds = plan.seconds + time.perf_counter() - t_start
    timings["total"] = seconds  # this slide's own stages up to the stitched mask (outputs not included)
    info = dataclasses.replace(plan.slide.info, decode_errors=plan.slide.decode_errors())
    return StitchedSlide(plan.slide_path, plan.out_dir, info, result, seconds, plan.key, plan.fence)


def _tile_counts(plan: PlannedSlide) -> dict[str, int]:
    """grid (all tiles), tissue (touching tissue), roi (touching tissue inside the regions; with regions only),
    run (inferred)."""
    counts = {"grid": plan.grid.n_tiles, "tissue": plan.n_tissue}
    if plan.n_roi is not None:
        counts["roi"] = plan.n_roi
    counts["run"] = len(plan.tiles)
    return counts


def _count_regions(plan: PlannedSlide, raw_path: Path, num_classes: int) -> RegionsResult | None:
    """The pixels of each class inside each region, from the finished raw mask (None without regions)."""
    if plan.regions is None:
        return None
    t0 = time.perf_counter()
    counted = plan.regions.count(raw_path, num_classes)
    plan.timings["regions"] = plan.timings.get("regions", 0.0) + time.perf_counter() - t0
    return counted


def finish_slide(done: StitchedSlide, bundle: Bundle, options: SegmentOptions, *,
                 run_info: dict[str, Any] | None = None) -> SlideResult:
    """Stage 3: write the outputs from the raw mask (each atomically), then remove the raw mask. Touches no
    backend, so it can run on a background thread while the next slide is inferred. `run_info`: JSON-able
    fields added to report.json's "run" (the batch's run id, the attempt, the worker)."""
    from slidefuse.runtime.heap import release_memory
    from slidefuse.runtime.outputs import write_outputs

    result, timings = done.result, done.result.timings
    t0 = time.perf_counter()
    release_memory()  # what inference and stitching freed goes back to the OS before the outputs are made
    try:
        outputs = write_outputs(result, done.info, bundle, done.out_dir, options.outputs,
                                extra_report={"options": options.to_dict(), "skip_key": done.key,
                                              **(run_info or {})}, fence=done.fence)
    finally:
        result.remove_scratch()
    timings["write"] = time.perf_counter() - t0
    seconds = done.seconds + timings["write"]
    n_run = result.tile_counts["run"]
    log.info("%s: done in %.1f s (%d tiles, %.1f tiles/s inference)", done.slide_path.name, seconds, n_run,
             n_run / timings["inference"] if timings.get("inference") else 0.0)
    errors = done.info.decode_errors
    return SlideResult(done.slide_path, Status.OK, done.out_dir, None, dict(outputs), seconds, dict(result.tile_counts),
                       dict(timings), errors.count if errors is not None else None)


def segment_slide(
    slide_path: Path,
    bundle: Bundle,
    out_root: Path,
    options: SegmentOptions,
    backend: Backend,
    *,
    out_dir: Path | None = None,
    progress: Progress | None = None,
) -> SlideResult:
    """Segment one slide into `out_dir` (default OUT/<slide stem>) with an open `backend`; raises on failure.

    Stages, in turn: `plan_slide` (open, thumbnail + tissue, grid + tile selection), `infer_slide` (pipeline +
    stitch), `finish_slide` (outputs). `segment_many` runs the same stages with the first and last of
    neighbouring slides overlapped with inference.
    """
    slide_path = Path(slide_path)
    out_dir = Path(out_dir) if out_dir is not None else Path(out_root) / slide_stem(slide_path)
    plan = plan_slide(slide_path, bundle, options, out_dir)
    done = infer_slide(plan, bundle, options, backend, progress or NullProgress())
    return finish_slide(done, bundle, options)


