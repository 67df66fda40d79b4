"""Per-slide orchestration (`segment_slide`) and the batch runner (`segment_many`).

A slide goes through three stages: `plan_slide` (open the slide, find tissue on a thumbnail, lay the tile
grid and select tiles), `infer_slide` (stream the tiles through the pipeline into the stitcher) and
`finish_slide` (write the outputs); `segment_slide` runs them in turn. `segment_many` expands folders and list
files into slides, opens the backend once and runs the stages of each slide, planning the next slide and
writing the previous one's outputs on a background thread while the current slide's tiles run (the engine
need not wait for per-slide work); it records every slide in `OUT/run.json` and carries on past failures
(each reported with its slide).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slidefuse.errors import SlideNotFound, UsageError, one_line
from slidefuse.runtime.backends.base import Backend
from slidefuse.runtime.bundle import Bundle
from slidefuse.runtime.grid import TileGrid, TileRC, select_tiles
from slidefuse.runtime.outputs.registry import DEFAULT_FORMATS
from slidefuse.runtime.pipeline import PipelineOptions, run_pipeline
from slidefuse.runtime.progress import NullProgress, Progress
from slidefuse.runtime.stitch import Stitcher
from slidefuse.runtime.tissue import TissueParams, detect_tissue
from slidefuse.runtime.types import MaskResult, SlideInfo

log = logging.getLogger(__name__)

# File extensions scanned for in folders (case-insensitive). `.tif`/`.tiff` include OME-TIFF.
SLIDE_EXTENSIONS = (".svs", ".ndpi", ".mrxs", ".scn", ".tif", ".tiff", ".vms", ".vmu", ".bif", ".svslide")
RAW_NAME = "mask.raw.tmp"  # the stitcher's raw class-index file inside a slide's output folder (removed after)


@dataclass(frozen=True)
class SegmentOptions:
    backend: str = "ort-cpu"  # backend registry name (see `slidefuse.runtime.backends`)
    backend_options: Mapping[str, Any] = field(default_factory=dict)  # passed to open_backend (e.g. threads)
    batch_size: int = 8  # tiles per backend call
    overlap: int | None = None  # tile overlap in model px; None = the bundle's recommendation (capped at T/2)
    tissue: TissueParams = TissueParams()  # tissue detection and tile selection parameters
    all_tiles: bool = False  # run every tile of the grid, not only those touching tissue
    mpp: float | None = None  # slide pixel size override (um per level-0 px), for slides without one
    formats: frozenset[str] = DEFAULT_FORMATS  # output format names to write (see runtime.outputs.registry)
    mask_mpp: float | None = None  # write mask.tif at this coarser um/px (None: the model's mpp)
    overwrite: bool = False  # redo slides whose outputs are already complete for this bundle
    workers: int = 4  # reader threads
    prefetch: int = 2  # batches read ahead of the engine
    preload_max_pixels: int = 16_000_000  # decode the whole slide at the model's mpp once when it is this small
    overlap_slides: bool = True  # plan the next slide and write the last one's outputs while a slide runs

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UsageError(f"batch size must be >= 1, got {self.batch_size}")
        if self.workers < 1:
            raise UsageError(f"workers must be >= 1 reader thread, got {self.workers}")
        if self.prefetch < 1:
            raise UsageError(f"prefetch must be >= 1 batch, got {self.prefetch}")
        if self.overlap is not None and self.overlap < 0:
            raise UsageError(f"overlap must be >= 0 px, got {self.overlap}")
        if self.mpp is not None and not self.mpp > 0:
            raise UsageError(f"--mpp must be a positive number of microns per pixel, got {self.mpp}")
        if self.mask_mpp is not None and not self.mask_mpp > 0:
            raise UsageError(f"mask pixel size must be positive, got {self.mask_mpp}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["formats"] = sorted(self.formats)
        d["backend_options"] = dict(self.backend_options)
        return d


@dataclass
class SlideResult:
    """What happened to one slide."""

    slide: Path  # the slide file as given
    status: str  # "ok", "skipped" (outputs already complete for this bundle) or "failed"
    out_dir: Path | None = None  # OUT/<slide stem>
    error: str | None = None  # one-line reason when failed
    outputs: dict[str, Path] = field(default_factory=dict)  # format -> written file
    seconds: float = 0.0  # wall time spent on the slide
    tile_counts: dict[str, int] = field(default_factory=dict)  # grid / tissue / run
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    @property
    def ok(self) -> bool:
        return self.status != "failed"


# ------------------------------------------------------------------------------------------- inputs


def slide_stem(path: Path) -> str:
    """Output folder name of a slide: its file name without the extension (and without `.ome` for
    OME-TIFF)."""
    name = path.name
    low = name.lower()
    for ext in (".ome.tiff", ".ome.tif", *SLIDE_EXTENSIONS):
        if low.endswith(ext):
            return name[: -len(ext)] or name
    return path.stem or name


def _is_slide_file(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(SLIDE_EXTENSIONS) and not p.name.startswith(".")


def scan_folder(folder: Path, exclude: Path | None = None) -> list[Path]:
    """Slide files under `folder` (recursive, sorted), by extension; files under `exclude` (the output
    folder) are left out."""
    ex = exclude.resolve() if exclude is not None else None
    out = []
    for p in sorted(folder.rglob("*")):
        if not _is_slide_file(p):
            continue
        if ex is not None and (p.resolve() == ex or ex in p.resolve().parents):
            continue
        out.append(p)
    return out


def read_list_file(list_file: Path) -> list[Path]:
    """Paths in a text file, one per line; blank lines and `#` comments are ignored; relative paths are
    relative to the list file's folder."""
    if not list_file.is_file():
        raise SlideNotFound(f"{list_file}: no such list file; pass a text file with one slide path per line")
    out = []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        entry = line.split("#", 1)[0].strip() if line.lstrip().startswith("#") else line.strip()
        if not entry:
            continue
        p = Path(entry).expanduser()
        out.append(p if p.is_absolute() else list_file.parent / p)
    return out


def collect_slides(
    inputs: Sequence[Path], list_file: Path | None = None, exclude: Path | None = None
) -> list[Path]:
    """Expand slide files, folders (scanned recursively for SLIDE_EXTENSIONS) and a list file into slide
    paths, in order, without repeats. Paths that do not exist are kept: they fail alone when processed.
    Raises UsageError when nothing is given, or when the given folders hold no slide at all."""
    given = [Path(p) for p in inputs]
    if list_file is not None:
        given += read_list_file(Path(list_file))
    if not given:
        raise UsageError("no slides given; pass slide files or folders, or --list FILE")
    out: list[Path] = []
    seen: set[Path] = set()
    empty_folders = []
    for p in given:
        found = scan_folder(p, exclude) if p.is_dir() else [p]
        if p.is_dir() and not found:
            empty_folders.append(p)
        for s in found:
            key = s.resolve() if s.exists() else s.absolute()
            if key not in seen:
                seen.add(key)
                out.append(s)
    if not out:
        raise UsageError(
            f"no slides found in {', '.join(str(f) for f in empty_folders)}; "
            f"slide files end in {' '.join(SLIDE_EXTENSIONS)}"
        )
    for f in empty_folders:
        log.warning("%s: no slide files in this folder (extensions %s)", f, " ".join(SLIDE_EXTENSIONS))
    return out


def output_dirs(slides: Sequence[Path], out_root: Path) -> list[Path]:
    """OUT/<stem> for each slide; when two slides share a stem, the later ones get their parent folder's
    name as a prefix (then a counter), so no slide overwrites another's outputs."""
    used: set[str] = set()
    out = []
    for s in slides:
        name = slide_stem(s)
        if name in used:
            name = f"{s.parent.name}_{name}" if s.parent.name else name
            base, k = name, 2
            while name in used:
                name, k = f"{base}_{k}", k + 1
        used.add(name)
        out.append(Path(out_root) / name)
    return out


# ------------------------------------------------------------------------------------------- stages


def effective_overlap(bundle: Bundle, options: SegmentOptions) -> int:
    """Overlap in model px: the option, else the bundle's recommendation capped at half a tile."""
    t = bundle.manifest.tile_size
    if options.overlap is not None:
        if options.overlap > t // 2:
            raise UsageError(
                f"--overlap {options.overlap} px is more than half of this model's {t} px tile; "
                f"choose 0..{t // 2}"
            )
        return options.overlap
    return min(max(int(bundle.manifest.overlap), 0), t // 2)


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
    view: Any  # the slide at the model's um/px (ScaledView)
    grid: TileGrid
    tiles: list[TileRC]
    n_tissue: int
    thumb: np.ndarray
    tissue: np.ndarray
    thumb_mpp: float
    timings: dict[str, float]
    seconds: float  # time this slide's own stages took so far

    def close(self) -> None:
        self.slide.close()


@dataclass
class StitchedSlide:
    """A slide's tiles run and stitched into the raw mask on disk (stage 2 of 3); the slide is closed."""

    slide_path: Path
    out_dir: Path
    info: SlideInfo
    result: MaskResult
    seconds: float


def plan_slide(slide_path: Path, bundle: Bundle, options: SegmentOptions, out_dir: Path) -> PlannedSlide:
    """Stage 1: open the slide, find tissue on a thumbnail, lay the grid and choose the tiles. Touches no
    backend, so it can run on a background thread while another slide is inferred."""
    from slidefuse.runtime.slide import open_slide

    t_start = time.perf_counter()
    m = bundle.manifest
    timings: dict[str, float] = {}
    slide = open_slide(Path(slide_path), mpp=options.mpp, colour_transform=bundle.manifest.color_transform)
    try:
        t0 = time.perf_counter()
        thumb, tissue, thumb_mpp = find_tissue(slide, options.tissue)
        timings["tissue"] = time.perf_counter() - t0
        view = slide.scaled(m.mpp)
        t0 = time.perf_counter()
        if view.preload(options.preload_max_pixels):
            log.info("%s: %d x %d px at %g um/px decoded once into memory (small slide)",
                     Path(slide_path).name, view.width, view.height, m.mpp)
        timings["preload"] = time.perf_counter() - t0
        overlap = effective_overlap(bundle, options)
        grid = TileGrid(view.width, view.height, m.tile_size, overlap, margin=overlap)
        tiles, n_tissue = plan_tiles(grid, tissue, m.mpp, thumb_mpp, options)
    except BaseException:
        slide.close()
        raise
    log.info("%s: %d x %d px at %g um/px, %d of %d tiles to run (%d x %d grid, tile %d, overlap %d)",
             Path(slide_path).name, grid.width, grid.height, m.mpp, len(tiles), grid.n_tiles, grid.n_rows,
             grid.n_cols, grid.tile, grid.overlap)
    return PlannedSlide(Path(slide_path), Path(out_dir), slide, view, grid, tiles, n_tissue, thumb, tissue,
                        thumb_mpp, timings, time.perf_counter() - t_start)


def infer_slide(
    plan: PlannedSlide, bundle: Bundle, options: SegmentOptions, backend: Backend, progress: Progress
) -> StitchedSlide:
    """Stage 2: stream the planned tiles through the backend into the stitcher (disk-backed raw mask in the
    output folder). Closes the slide; removes the raw mask when it fails."""
    from slidefuse.runtime.outputs import clean_temporaries

    t_start = time.perf_counter()
    m = bundle.manifest
    grid, tiles, timings = plan.grid, plan.tiles, plan.timings
    raw_path = plan.out_dir / RAW_NAME
    try:
        plan.out_dir.mkdir(parents=True, exist_ok=True)
        clean_temporaries(plan.out_dir)
        progress.update(0, len(tiles))
        with Stitcher(grid, m.num_classes, raw_path) as stitcher:
            stats = run_pipeline(
                plan.view, grid, tiles, backend, stitcher,
                PipelineOptions(batch_size=options.batch_size, workers=options.workers, prefetch=options.prefetch),
                progress=progress.update,
            )
            t0 = time.perf_counter()
            stitcher.finish()
            stats.stitch += time.perf_counter() - t0
        timings.update(stats.as_dict())
        result = MaskResult(
            raw_path=raw_path,
            mask_width=grid.width,
            mask_height=grid.height,
            mpp=m.mpp,
            class_pixels=stitcher.class_pixels.copy(),
            tissue=plan.tissue,
            thumbnail=plan.thumb,
            tile_counts={"grid": grid.n_tiles, "tissue": plan.n_tissue, "run": len(tiles)},
            timings=timings,
            backend=backend.info().to_dict(),
            extra={
                "tile": grid.tile, "overlap": grid.overlap, "stride": grid.stride, "margin": grid.margin,
                "grid_rows": grid.n_rows, "grid_cols": grid.n_cols, "batch_size": options.batch_size,
                "workers": options.workers, "batches": stats.batches, "thumb_mpp": plan.thumb_mpp,
                "all_tiles": options.all_tiles, "stitcher_bytes": stitcher.accumulator_bytes(),
            },
        )
    except BaseException:
        raw_path.unlink(missing_ok=True)
        raise
    finally:
        plan.close()
    seconds = plan.seconds + time.perf_counter() - t_start
    timings["total"] = seconds  # this slide's own stages up to the stitched mask (outputs not included)
    return StitchedSlide(plan.slide_path, plan.out_dir, plan.slide.info, result, seconds)


def finish_slide(done: StitchedSlide, bundle: Bundle, options: SegmentOptions) -> SlideResult:
    """Stage 3: write the outputs from the raw mask (each atomically), then remove the raw mask. Touches no
    backend, so it can run on a background thread while the next slide is inferred."""
    from slidefuse.runtime.outputs import write_outputs

    result, timings = done.result, done.result.timings
    t0 = time.perf_counter()
    try:
        outputs = write_outputs(result, done.info, bundle, done.out_dir, options.formats,
                                mask_mpp=options.mask_mpp, extra_report={"options": options.to_dict()})
    finally:
        result.raw_path.unlink(missing_ok=True)
    timings["write"] = time.perf_counter() - t0
    seconds = done.seconds + timings["write"]
    n_run = result.tile_counts["run"]
    log.info("%s: done in %.1f s (%d tiles, %.1f tiles/s inference)", done.slide_path.name, seconds, n_run,
             n_run / timings["inference"] if timings.get("inference") else 0.0)
    return SlideResult(done.slide_path, "ok", done.out_dir, None, dict(outputs), seconds, dict(result.tile_counts),
                       dict(timings))


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


# ------------------------------------------------------------------------------------------- batches


def _with_slide(slide: Path, reason: str) -> str:
    return reason if str(slide) in reason else f"{slide}: {reason}"


def segment_many(
    paths: Sequence[Path],
    bundle: Bundle,
    out_root: Path,
    options: SegmentOptions,
    *,
    list_file: Path | None = None,
    progress: Progress | None = None,
    backend: Backend | None = None,
) -> list[SlideResult]:
    """Segment every slide in `paths` (slide files, folders scanned recursively) and `list_file`.

    The backend is opened once (or `backend`, already open, is used). A slide whose outputs are complete and
    made by this bundle is skipped unless `options.overwrite`. With `options.overlap_slides` and more than one
    slide, a background thread plans the next slide (thumbnail, tissue, tiles) and writes the previous
    slide's outputs while the current slide's tiles run, so the engine does not wait for per-slide work; at
    most three slides are in flight, and outputs are still written atomically, in slide order. A failing
    slide is recorded with a one-line reason (naming the slide) and the others continue; failures are logged
    at INFO only, since they are returned (status "failed", `error`) for the caller to report. Every slide
    gets an entry in OUT/run.json. Returns one SlideResult per slide, in input order.
    """
    from slidefuse.runtime.backends import open_backend
    from slidefuse.runtime.outputs import RunLog, outputs_complete

    out_root = Path(out_root)
    slides = collect_slides(paths, list_file, exclude=out_root)
    dirs = output_dirs(slides, out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    run_log = RunLog(out_root)
    progress = progress or NullProgress()
    log.info("%d slide(s) to segment into %s with %s (%s)", len(slides), out_root, bundle.path, options.backend)
    skip = [
        not options.overwrite and outputs_complete(d, bundle.digest, options.formats, mask_mpp=options.mask_mpp)
        for d in dirs
    ]
    batch = _Batch(slides, dirs, skip, bundle, options, run_log, progress)
    if backend is not None:
        batch.run(backend)
    else:
        with open_backend(options.backend, bundle, **dict(options.backend_options)) as opened:
            batch.run(opened)
    results = [batch.results[i] for i in range(len(slides))]

    n_failed = sum(r.status == "failed" for r in results)
    n_skipped = sum(r.status == "skipped" for r in results)
    log.info("%d slide(s): %d segmented, %d skipped, %d failed; run log %s", len(results),
             len(results) - n_failed - n_skipped, n_skipped, n_failed, run_log.path)
    return results


class _Batch:
    """The slide loop of `segment_many`: inference on the calling thread; with overlap, planning of the next
    slide and outputs of the previous one on one background thread (FIFO: outputs of slide i-1 are written
    before slide i+1 is planned)."""

    def __init__(self, slides: Sequence[Path], dirs: Sequence[Path], skip: Sequence[bool], bundle: Bundle,
                 options: SegmentOptions, run_log: Any, progress: Progress) -> None:
        self.slides, self.dirs, self.skip = list(slides), list(dirs), list(skip)
        self.bundle, self.options, self.run_log, self.progress = bundle, options, run_log, progress
        self.results: dict[int, SlideResult] = {}
        self.started: dict[int, float] = {}
        self.pending: tuple[int, Future[SlideResult]] | None = None  # outputs being written
        self.planned: dict[int, Future[PlannedSlide]] = {}  # slides planned ahead

    def run(self, backend: Backend) -> None:
        overlap = self.options.overlap_slides and sum(not s for s in self.skip) > 1
        # One worker, FIFO: the outputs of slide i-1 are queued before slide i+1's plan, so an interruption
        # only ever cancels a plan, never the outputs of a slide whose tiles are done.
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slidefuse-slide") if overlap else None
        try:
            for i in range(len(self.slides)):
                self._one(i, backend, pool)
            self._settle()
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)  # lets an output being written finish
            writing = self.pending[1] if self.pending is not None else None
            if writing is not None and writing.done() and not writing.cancelled():  # interrupted: record it
                self._settle()
            for ahead in self.planned.values():  # planned ahead but never run (interrupted): close the slides
                if ahead.done() and not ahead.cancelled() and ahead.exception() is None:
                    ahead.result().close()

    def _one(self, i: int, backend: Backend, pool: ThreadPoolExecutor | None) -> None:
        slide, out_dir = self.slides[i], self.dirs[i]
        self.progress.start_slide(i + 1, len(self.slides), slide.name)
        self.started[i] = time.perf_counter()
        if self.skip[i]:
            log.info("%s: outputs in %s are complete for this bundle; skipped (--overwrite redoes it)",
                     slide, out_dir)
            (out_dir / RAW_NAME).unlink(missing_ok=True)  # left by a run killed while redoing it
            self._settle()
            self._record(i, SlideResult(slide, "skipped", out_dir))
            self.progress.end_slide("skipped")
            return
        try:
            ahead = self.planned.pop(i, None)
            plan = ahead.result() if ahead is not None else plan_slide(slide, self.bundle, self.options, out_dir)
            nxt = next((j for j in range(i + 1, len(self.slides)) if not self.skip[j]), None)
            if pool is not None and nxt is not None:
                self.planned[nxt] = pool.submit(plan_slide, self.slides[nxt], self.bundle, self.options,
                                                self.dirs[nxt])
            done = infer_slide(plan, self.bundle, self.options, backend, self.progress)
        except Exception as exc:  # recorded with its slide; the batch goes on
            self._settle()
            self._record(i, self._failed(i, exc))
            self.progress.end_slide("failed")
            return
        self._settle()
        if pool is None:
            res = self._finish(i, done)
            self._record(i, res)
            self.progress.end_slide(res.status)
        else:
            self.pending = (i, pool.submit(self._finish, i, done))
            self.progress.end_slide("tiles done; outputs being written")

    def _finish(self, i: int, done: StitchedSlide) -> SlideResult:
        try:
            return finish_slide(done, self.bundle, self.options)
        except Exception as exc:
            done.result.raw_path.unlink(missing_ok=True)  # never leave the raw mask behind a failed slide
            return self._failed(i, exc)

    def _failed(self, i: int, exc: BaseException) -> SlideResult:
        slide = self.slides[i]
        reason = _with_slide(slide, one_line(exc))
        log.info("failed: %s", reason)
        log.debug("traceback of the failure of %s", slide, exc_info=exc)
        return SlideResult(slide, "failed", self.dirs[i], reason, seconds=time.perf_counter() - self.started[i])

    def _settle(self) -> None:
        """Wait for the outputs being written in the background, and record that slide."""
        if self.pending is not None:
            i, fut = self.pending
            self.pending = None
            self._record(i, fut.result())

    def _record(self, i: int, res: SlideResult) -> None:
        self.results[i] = res
        self.run_log.record(res.slide, res.status, error=res.error, out_dir=res.out_dir, outputs=res.outputs,
                            seconds=res.seconds if res.status == "ok" else time.perf_counter() - self.started[i],
                            tiles=res.tile_counts or None, backend=self.options.backend)


__all__ = [
    "SLIDE_EXTENSIONS",
    "SegmentOptions",
    "SlideInfo",
    "SlideResult",
    "collect_slides",
    "segment_many",
    "segment_slide",
    "slide_stem",
]
