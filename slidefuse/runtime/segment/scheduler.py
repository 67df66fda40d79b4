"""The batch runner: `segment_many` runs every slide's stages, overlapping the planning of the next slide
and the outputs of the previous one with the current slide's inference (one background thread, FIFO)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from slidefuse.errors import one_line
from slidefuse.runtime.backends.base import Backend
from slidefuse.runtime.bundle import Bundle
from slidefuse.runtime.progress import NullProgress, Progress
from slidefuse.runtime.segment import stages
from slidefuse.runtime.segment.inputs import collect_slides, output_dirs
from slidefuse.runtime.segment.options import RAW_NAME, SegmentOptions, SlideResult
from slidefuse.runtime.segment.stages import PlannedSlide, StitchedSlide

log = logging.getLogger(__name__)


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
    on_result: Callable[[SlideResult], None] | None = None,
) -> list[SlideResult]:
    """Segment every slide in `paths` (slide files, folders scanned recursively) and `list_file`.

    The backend is opened once (or `backend`, already open, is used). A slide whose outputs are complete and
    made by this bundle is skipped unless `options.overwrite`. With `options.overlap_slides` and more than one
    slide, a background thread plans the next slide (thumbnail, tissue, tiles) and writes the previous
    slide's outputs while the current slide's tiles run, so the engine does not wait for per-slide work; at
    most three slides are in flight, and outputs are still written atomically, in slide order. A failing
    slide is recorded with a one-line reason (naming the slide) and the others continue; failures are logged
    at INFO only, since they are returned (status "failed", `error`) for the caller to report. Every slide
    gets an entry in OUT/run.json. Returns one SlideResult per slide, in input order. `on_result` is called
    with each slide's result as soon as it is recorded (slide order; the Python API yields from it).
    """
    from slidefuse.runtime.backends import open_backend
    from slidefuse.runtime.outputs import RunLog, outputs_complete

    out_root = Path(out_root)
    stages.effective_overlap(bundle, options)  # an overlap this model cannot take fails before any slide
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
    batch = _SlideBatch(slides, dirs, skip, bundle, options, run_log, progress)
    batch.on_result = on_result
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


class _SlideBatch:
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
        self.on_result: Callable[[SlideResult], None] | None = None  # told of each result once recorded

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
            plan = ahead.result() if ahead is not None else stages.plan_slide(slide, self.bundle, self.options, out_dir)
            nxt = next((j for j in range(i + 1, len(self.slides)) if not self.skip[j]), None)
            if pool is not None and nxt is not None:
                self.planned[nxt] = pool.submit(stages.plan_slide, self.slides[nxt], self.bundle, self.options,
                                                self.dirs[nxt])
            done = stages.infer_slide(plan, self.bundle, self.options, backend, self.progress)
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
            return stages.finish_slide(done, self.bundle, self.options)
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
        if self.on_result is not None:
            self.on_result(res)
