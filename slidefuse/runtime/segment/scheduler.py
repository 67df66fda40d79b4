"""The batch runner: `segment_many` runs every slide's stages, overlapping the planning of the next slide
and the outputs of the previous one with the current slide's inference (one background thread, FIFO).

Many processes (on one host or many sharing OUT) can run the same list into the same OUT: before a slide
is planned, its claim file `OUT/<slide>/.lock` is taken (see `claims`); a slide claimed by another live
process is left to it (status "claimed", not recorded here), a slide finished meanwhile is skipped, and a
claim whose holder died is taken over. `options.shard = (i, n)` keeps only every n-th slide from the i-th
(a static split, e.g. one Slurm array task each); the output folder names are those of the whole list.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from slidefuse.atomic import clean_temporaries
from slidefuse.errors import one_line
from slidefuse.runtime.backends.base import Backend
from slidefuse.runtime.bundle import Bundle
from slidefuse.runtime.progress import NullProgress, Progress
from slidefuse.runtime.segment import stages
from slidefuse.runtime.segment.claims import ClaimPolicy, ClaimSet, new_run_id
from slidefuse.runtime.segment.inputs import collect_slides, list_overrides, output_dirs
from slidefuse.runtime.segment.options import SegmentOptions, SlideResult
from slidefuse.runtime.segment.runlog import RunLog
from slidefuse.runtime.segment.skip import Decision, decide
from slidefuse.runtime.segment.stages import PlannedSlide, StitchedSlide
from slidefuse.runtime.types import RAW_NAME, Status

log = logging.getLogger(__name__)

_CLAIMED_ELSEWHERE = Decision("claimed", "claimed by another process sharing OUT")


def _with_slide(slide: Path, reason: str) -> str:
    return reason if str(slide) in reason else f"{slide}: {reason}"


def batch_slides(paths: Sequence[Path], list_file: Path | None, out_root: Path,
                 shard: tuple[int, int] | None) -> tuple[list[Path], list[Path]]:
    """(slides, their output folders) of a run: the whole list's folder names, then this shard's share."""
    slides = collect_slides(paths, list_file, exclude=out_root)
    named = {p: e.out_name for p, e in list_overrides(list_file).items() if e.out_name}
    dirs = output_dirs(slides, out_root, named)
    if shard is not None:
        i, n = shard
        slides, dirs = slides[i::n], dirs[i::n]
        log.info("shard %d/%d: %d slide(s) of this list", i, n, len(slides))
    return slides, dirs


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
    made by this bundle is skipped unless `options.overwrite`; a slide claimed by another process sharing
    OUT is left to it ("claimed"). With `options.overlap_slides` and more than one slide, a background thread
    plans the next slide (thumbnail, tissue, tiles) and writes the previous slide's outputs while the current
    slide's tiles run, so the engine does not wait for per-slide work; at most three slides are in flight,
    and outputs are still written atomically, in slide order. A failing slide is recorded with a one-line
    reason (naming the slide) and the others continue; failures are logged at INFO only, since they are
    returned (status "failed", `error`) for the caller to report. Every slide this process ran or skipped
    gets an entry in OUT/run.json. Returns one SlideResult per slide, in input order. `on_result` is called
    with each slide's result as soon as it is recorded (slide order; the Python API yields from it).
    """
    from slidefuse.runtime.backends import open_backend

    out_root = Path(out_root)
    stages.check_run(bundle, options, out_root)  # overlap, mask mpp and OUT this run cannot take fail first
    slides, dirs = batch_slides(paths, list_file, out_root, options.shard)
    out_root.mkdir(parents=True, exist_ok=True)
    run_id = new_run_id()
    run_log = RunLog(out_root, run_id=run_id)
    progress = progress or NullProgress()
    log.info("%d slide(s) to segment into %s with %s (%s); run %s", len(slides), out_root, bundle.path,
             options.backend, run_id)
    with ClaimSet(run_id, ClaimPolicy(timeout=options.claim_timeout)) as claims:
        batch = _SlideBatch(slides, dirs, bundle, options, run_log, progress, claims)
        batch.on_result = on_result
        mpps = {p: e.mpp for p, e in list_overrides(list_file).items() if e.mpp is not None}
        batch.slide_mpp = {i: mpps[s] for i, s in enumerate(slides) if s in mpps}  # a list CSV's mpp column
        if backend is not None:
            batch.run(backend)
        else:
            with open_backend(options.backend, bundle, **dict(options.backend_options)) as opened:
                batch.run(opened)
    results = [batch.results[i] for i in range(len(slides))]
    counts = {s: sum(r.status == s for r in results) for s in Status}
    log.info("%d slide(s): %d segmented, %d skipped, %d failed, %d done by other processes; run log %s",
             len(results), counts[Status.OK], counts[Status.SKIPPED], counts[Status.FAILED], counts[Status.CLAIMED],
             run_log.path)
    return results


class _SlideBatch:
    """The slide loop of `segment_many`: inference on the calling thread; with overlap, planning of the next
    slide and outputs of the previous one on one background thread (FIFO: outputs of slide i-1 are written
    before slide i+1 is planned). A slide is claimed when it is first looked at (reached, or chosen to be
    planned ahead) and released once it is recorded."""

    def __init__(self, slides: Sequence[Path], dirs: Sequence[Path], bundle: Bundle, options: SegmentOptions,
                 run_log: RunLog, progress: Progress, claims: ClaimSet) -> None:
        self.slides, self.dirs = list(slides), list(dirs)
        self.bundle, self.options, self.run_log, self.progress = bundle, options, run_log, progress
        self.claims = claims
        self.decided: dict[int, Decision] = {}
        self.batch_started = time.time()  # outputs written after this, with --overwrite, are this batch's
        self.results: dict[int, SlideResult] = {}
        self.started: dict[int, float] = {}
        self.pending: tuple[int, Future[SlideResult]] | None = None  # outputs being written
        self.planned: dict[int, Future[PlannedSlide]] = {}  # slides planned ahead
        self.on_result: Callable[[SlideResult], None] | None = None  # told of each result once recorded
        self.slide_mpp: dict[int, float] = {}  # slide index -> its own pixel size (a list CSV's mpp column)

    def opts(self, i: int) -> SegmentOptions:
        """The options of slide i: the batch's, with the slide's own pixel size where the list gives one."""
        mpp = self.slide_mpp.get(i)
        return self.options if mpp is None else dataclasses.replace(self.options, mpp=mpp)

    def decide(self, i: int) -> Decision:
        """Whether this process runs slide i (claimed here), skips it (complete before this batch) or leaves it
        to another process (claimed by it, or done by it during this batch: that process records it)."""
        if i not in self.decided:
            self.decided[i] = self._decide(i)
        return self.decided[i]

    def _decide(self, i: int) -> Decision:
        out_dir, options, slide = self.dirs[i], self.opts(i), self.slides[i]
        first = decide(slide, out_dir, self.bundle, options, since=self.batch_started)
        if not first.run:
            return first
        if not self._claim(out_dir):
            return _CLAIMED_ELSEWHERE
        again = decide(slide, out_dir, self.bundle, options, since=self.batch_started)  # done meanwhile?
        if not again.run:
            self.claims.release(out_dir)
        return again

    def _claim(self, out_dir: Path) -> bool:
        try:
            return self.claims.try_claim(out_dir)
        except OSError as exc:  # the folder cannot be written: the slide then fails alone, naming the cause
            log.warning("%s: cannot write its claim file (%s); the slide runs unclaimed", out_dir, one_line(exc))
            return True

    def run(self, backend: Backend) -> None:
        overlap = self.options.overlap_slides and len(self.slides) > 1
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
            for out_dir in self.claims.held():  # interrupted: what this process left in the folders it still holds
                clean_temporaries(out_dir)

    def _not_run(self, i: int, decision: Decision) -> None:
        slide, out_dir = self.slides[i], self.dirs[i]
        self._settle()
        if decision.status == Status.SKIPPED:
            log.info("%s: outputs in %s are complete for this bundle; skipped (--overwrite redoes it)",
                     slide, out_dir)
            self._record(i, SlideResult(slide, Status.SKIPPED, out_dir))
            self.progress.end_slide(Status.SKIPPED)
        else:
            log.info("%s: done or being done by another process sharing %s; left to it", slide, out_dir.parent)
            self.results[i] = SlideResult(slide, Status.CLAIMED, out_dir)
            if self.on_result is not None:
                self.on_result(self.results[i])
            self.progress.end_slide("claimed by another process")

    def _next_to_run(self, i: int) -> int | None:
        return next((j for j in range(i + 1, len(self.slides)) if self.decide(j).run), None)

    def _one(self, i: int, backend: Backend, pool: ThreadPoolExecutor | None) -> None:
        slide, out_dir = self.slides[i], self.dirs[i]
        self.progress.start_slide(i + 1, len(self.slides), slide.name)
        self.started[i] = time.perf_counter()
        decision = self.decide(i)
        if not decision.run:
            self._not_run(i, decision)
            return
        try:
            (out_dir / RAW_NAME).unlink(missing_ok=True)  # left by a run killed while doing it
            ahead = self.planned.pop(i, None)
            plan = ahead.result() if ahead is not None else stages.plan_slide(slide, self.bundle, self.opts(i), out_dir)
            nxt = self._next_to_run(i) if pool is not None else None
            if pool is not None and nxt is not None:
                self.planned[nxt] = pool.submit(stages.plan_slide, self.slides[nxt], self.bundle, self.opts(nxt),
                                                self.dirs[nxt])
            done = stages.infer_slide(plan, self.bundle, self.opts(i), backend, self.progress)
        except Exception as exc:  # recorded with its slide; the batch goes on
            self._settle()
            self._record(i, self._failed(i, exc))
            self.progress.end_slide(Status.FAILED)
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
            return stages.finish_slide(done, self.bundle, self.opts(i), run_info={"run_id": self.claims.run_id})
        except Exception as exc:
            done.result.raw_path.unlink(missing_ok=True)  # never leave the raw mask behind a failed slide
            return self._failed(i, exc)

    def _failed(self, i: int, exc: BaseException) -> SlideResult:
        slide = self.slides[i]
        reason = _with_slide(slide, one_line(exc))
        log.info("failed: %s", reason)
        log.debug("traceback of the failure of %s", slide, exc_info=exc)
        return SlideResult(slide, Status.FAILED, self.dirs[i], reason, seconds=time.perf_counter() - self.started[i])

    def _settle(self) -> None:
        """Wait for the outputs being written in the background, and record that slide."""
        if self.pending is not None:
            i, fut = self.pending
            res = fut.result()  # an interruption here keeps it pending: it is recorded on the way out
            self.pending = None
            self._record(i, res)

    def _record(self, i: int, res: SlideResult) -> None:
        self.results[i] = res
        self.run_log.record(res.slide, res.status, error=res.error, out_dir=res.out_dir, outputs=res.outputs,
                            seconds=res.seconds if res.status == Status.OK else time.perf_counter() - self.started[i],
                            tiles=res.tile_counts or None, backend=self.options.backend,
                            decode_errors=res.decode_errors)
        self.claims.release(self.dirs[i])
        if self.on_result is not None:
            self.on_result(res)
