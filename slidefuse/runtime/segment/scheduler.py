"""The batch runner: `segment_many` runs every slide's stages, overlapping the planning of the next slide
and the outputs of the previous one with the current slide's inference (one background thread, FIFO).

Many processes (on one host or many sharing OUT) can run the same list into the same OUT: before a slide
is planned, its claim file `OUT/<slide>/.lock` is taken (see `claims`); a slide claimed by another live
process is left to it for now, a slide finished meanwhile is skipped, and a claim whose holder died is taken
over. Once the end of the list is reached, the process goes back to the slides other processes held: it
waits (polling with backoff) while their holders are alive, takes over any whose holder stops, and ends
when each is done, failed, or (`options.wait` False: at once) left to a live holder. A slide's files are
written under its claim's fence: a process whose claim was taken over stops that slide at its next step
(status "claim_lost", recorded as such, never over the new holder's entry). `options.shard = (i, n)` keeps
only every n-th slide from the i-th (a static split, e.g. one Slurm array task each); the output folder
names are those of the whole list.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slidefuse.atomic import clean_temporaries
from slidefuse.errors import ClaimBlocked, ClaimLost, UsageError, one_line
from slidefuse.runtime.backends.base import Backend
from slidefuse.runtime.bundle import Bundle
from slidefuse.runtime.coords import PLAUSIBLE_MPP
from slidefuse.runtime.progress import NullProgress, Progress
from slidefuse.runtime.segment import stages
from slidefuse.runtime.segment.claims import CLAIM_NAME, ClaimPolicy, ClaimSet, holder_of, new_run_id
from slidefuse.runtime.segment.inputs import BadRow, ListEntry, expand_inputs, output_dirs, read_slide_rows, slide_key
from slidefuse.runtime.segment.options import SegmentOptions, SlideResult
from slidefuse.runtime.segment.runlog import RunLog, read_records
from slidefuse.runtime.segment.skip import Decision, decide, resolved
from slidefuse.runtime.segment.stages import PlannedSlide, StitchedSlide
from slidefuse.runtime.types import Status

log = logging.getLogger(__name__)

_CLAIMED_ELSEWHERE = Decision("claimed", "claimed by another process sharing OUT")
_COMPLETED_UNRECORDED = Decision("skip", "its outputs were completed by a process that stopped before recording "
                                         "them; its claim was taken over")
MAX_POLL = 5.0  # seconds: the longest pause between two looks at the slides other processes hold


class BatchStopped(BaseException):
    """Raised out of `segment_many` once its `stop` event is set: the batch ended early, leaving no temporary
    file and no empty folder of its own (a BaseException, like KeyboardInterrupt, so no slide records it)."""


def _with_slide(slide: Path, reason: str) -> str:
    return reason if str(slide) in reason else f"{slide}: {reason}"


@dataclass(frozen=True)
class BatchInputs:
    """What a run covers: its slides and their output folders (the whole list's names, then this shard's
    share), each listed slide's own pixel size, and the list's bad rows (each one a failed slide)."""

    slides: list[Path]
    dirs: list[Path]
    slide_mpp: dict[int, float]  # slide index -> the list CSV's mpp for it
    bad: list[BadRow]
    slide_roi: dict[int, Path] = dataclasses.field(default_factory=dict)  # slide index -> the list CSV's roi


def plan_batch(paths: Sequence[Path], list_file: Path | None, out_root: Path, shard: tuple[int, int] | None,
               force_mpp: bool = False) -> BatchInputs:
    """The slides of a run. A slide given both as a path and in the list is one slide, with the list's options.
    A bad list row (see `inputs.read_slide_rows`; also an implausible mpp without `force_mpp`) is left out of
    the slides, to be recorded as failed; the other rows run."""
    entries, bad = read_slide_rows(Path(list_file)) if list_file is not None else ([], [])
    listed: dict[Path, ListEntry] = {}
    for e in entries:
        if _implausible(e.mpp, force_mpp):
            lo, hi = PLAUSIBLE_MPP
            bad.append(BadRow(Path(f"{list_file}:{e.line}"), e.line,
                              f"{list_file}, line {e.line}: mpp {e.mpp:g} um/px is outside the plausible "
                              f"{lo:g}..{hi:g} um/px of a slide; fix the cell, or pass force_mpp=True to use it "
                              "anyway"))
        else:
            listed.setdefault(slide_key(e.path), e)
    given = [Path(p) for p in paths] + [e.path for e in entries if slide_key(e.path) in listed]
    slides = expand_inputs(given, exclude=out_root) if given or not bad else []
    own = [listed.get(slide_key(s)) for s in slides]
    dirs = output_dirs(slides, out_root, {s: e.out_name for s, e in zip(slides, own, strict=True)
                                          if e is not None and e.out_name})
    mpps = {i: e.mpp for i, e in enumerate(own) if e is not None and e.mpp is not None}
    rois = {i: e.roi for i, e in enumerate(own) if e is not None and e.roi is not None}
    if shard is not None:
        i, n = shard
        keep = range(len(slides))[i::n]
        slides, dirs, mpps = slides[i::n], dirs[i::n], {k: mpps[j] for k, j in enumerate(keep) if j in mpps}
        rois = {k: rois[j] for k, j in enumerate(keep) if j in rois}
        log.info("shard %d/%d: %d slide(s) of this list", i, n, len(slides))
    return BatchInputs(slides, dirs, mpps, sorted(bad, key=lambda b: b.line), rois)


def _implausible(mpp: float | None, force: bool) -> bool:
    """Whether a list's mpp is outside PLAUSIBLE_MPP (and not forced)."""
    lo, hi = PLAUSIBLE_MPP
    return mpp is not None and not force and not lo <= mpp <= hi


def batch_slides(paths: Sequence[Path], list_file: Path | None, out_root: Path,
                 shard: tuple[int, int] | None) -> tuple[list[Path], list[Path]]:
    """(slides, their output folders) of a run whose workers take the batch's options (Ray): a list's bad row,
    or a per-slide mpp, is refused at once (UsageError naming the file and line)."""
    batch = plan_batch(paths, list_file, out_root, shard, force_mpp=True)
    if batch.bad:
        raise UsageError(f"{batch.bad[0].error} (on Ray every row must be valid)")
    return batch.slides, batch.dirs


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
    stop: threading.Event | None = None,
) -> list[SlideResult]:
    """Segment every slide in `paths` (slide files, folders scanned recursively) and `list_file`.

    The backend is opened once (or `backend`, already open, is used). A slide whose outputs are complete and
    made by this bundle is skipped unless `options.overwrite`; a slide claimed by another process sharing
    OUT is left to it ("claimed"; with `options.wait`, only once it is done, failed, or still held by a live
    process when the rest of the list is done). With `options.overlap_slides` and more than one slide, a
    background thread plans the next slide (thumbnail, tissue, tiles) and writes the previous slide's outputs
    while the current slide's tiles run, so the engine does not wait for per-slide work; at most three slides
    are in flight, and outputs are still written atomically, in slide order. A failing slide is recorded with
    a one-line reason (naming the slide) and the others continue; failures are logged at INFO only, since
    they are returned (status "failed", `error`) for the caller to report. A slide whose claim another
    process took over stops ("claim_lost"). Every slide this process ran or skipped gets an entry in
    OUT/run.json. A list's bad rows (`plan_batch`) are recorded as failed first, each named `LIST:LINE`, and the
    other slides run. Returns one SlideResult per bad row, then one per slide, in input order. `on_result` is
    called with each slide's result as soon as it is recorded (slide order, except the slides gone back to at
    the end; the Python API yields from it). `stop`: once set, the batch stops within one tile batch and raises
    BatchStopped.
    """
    from slidefuse.runtime.backends import open_backend

    out_root = Path(out_root)
    stages.check_run(bundle, options, out_root)  # overlap, mask mpp and OUT this run cannot take fail first
    inputs = plan_batch(paths, list_file, out_root, options.shard, options.force_mpp)
    slides, dirs = inputs.slides, inputs.dirs
    check_one_roi(options, len(slides) + len(inputs.bad))
    out_root.mkdir(parents=True, exist_ok=True)
    run_id = new_run_id()
    run_log = RunLog(out_root, run_id=run_id)
    progress = progress or NullProgress()
    log.info("%d slide(s) to segment into %s with %s (%s); run %s", len(slides), out_root, bundle.path,
             options.backend, run_id)
    refused = [_bad_row(row, run_log, on_result) for row in inputs.bad]
    created: set[Path] = set()  # output folders this process made (removed again when it leaves them empty)
    try:
        with ClaimSet(run_id, ClaimPolicy(timeout=options.claim_timeout)) as claims:
            batch = _SlideBatch(slides, dirs, bundle, options, run_log, progress, claims)
            batch.on_result, batch.stop, batch.created = on_result, stop, created
            batch.slide_mpp = inputs.slide_mpp  # a list CSV's mpp column
            batch.slide_roi = inputs.slide_roi  # and its roi column
            if backend is not None:
                batch.run(backend)
            elif slides:  # (only bad list rows: no backend to open)
                with open_backend(options.backend, bundle, **dict(options.backend_options)) as opened:
                    batch.run(opened)
    finally:
        _remove_empty(created)
    results = refused + [batch.results[i] for i in range(len(slides))]
    _log_summary(results, run_log)
    return results


def check_one_roi(options: SegmentOptions, n_slides: int) -> None:
    """Refuse one regions file (`options.roi`) for several slides: each slide's regions are its own."""
    if options.roi is not None and n_slides > 1:
        raise UsageError(f"roi {options.roi} is one slide's regions, but {n_slides} slides were given; run one "
                         "slide, or give each slide its regions in a list CSV's roi column", field="roi")


def _bad_row(row: BadRow, run_log: RunLog, on_result: Callable[[SlideResult], None] | None) -> SlideResult:
    """A bad list row, recorded as a failed slide (it never reached the batch)."""
    log.warning("failed: %s", row.error)
    run_log.record(row.slide, Status.FAILED, error=row.error, seconds=0.0)
    res = SlideResult(row.slide, Status.FAILED, None, row.error)
    if on_result is not None:
        on_result(res)
    return res


def _remove_empty(folders: Iterable[Path]) -> None:
    """Remove each folder that is empty (rmdir: a folder holding anyone's file stays)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            continue


def _log_summary(results: list[SlideResult], run_log: RunLog) -> None:
    counts = {s: sum(r.status == s for r in results) for s in Status}
    holders = sorted({r.holder for r in results if r.status == Status.CLAIMED and r.holder})
    log.info("%d slide(s): %d segmented, %d skipped, %d failed, %d lost to another process, %d done by other "
             "processes%s; run log %s", len(results), counts[Status.OK], counts[Status.SKIPPED],
             counts[Status.FAILED], counts[Status.CLAIM_LOST], counts[Status.CLAIMED],
             f" (held by {', '.join(holders)})" if holders else "", run_log.path)


class _Watch(Progress):
    """The progress hooks of a slide being inferred, which also stop it: when the batch's `stop` is set
    (BatchStopped) and when the heartbeat found the slide's claim taken over (ClaimLost)."""

    def __init__(self, inner: Progress, batch: _SlideBatch, out_dir: Path) -> None:
        self.inner, self.batch, self.out_dir = inner, batch, out_dir

    def start_slide(self, index: int, count: int, name: str) -> None:
        self.inner.start_slide(index, count, name)

    def update(self, done_tiles: int, total_tiles: int) -> None:
        self.batch.check_stop()
        holder = self.batch.claims.lost(self.out_dir)
        if holder is not None:
            raise ClaimLost(f"{self.out_dir}: this process's claim was taken over by {holder}; its work on the "
                            "slide stopped", holder=holder)
        self.inner.update(done_tiles, total_tiles)

    def end_slide(self, status: Status | str) -> None:
        self.inner.end_slide(status)


class _SlideBatch:
    """The slide loop of `segment_many`: inference on the calling thread; with overlap, planning of the next
    slide and outputs of the previous one on one background thread (FIFO: outputs of slide i-1 are written
    before slide i+1 is planned). A slide is claimed when it is first looked at (reached, or chosen to be
    planned ahead) and released once it is recorded; its files are written under the claim's fence."""

    def __init__(self, slides: Sequence[Path], dirs: Sequence[Path], bundle: Bundle, options: SegmentOptions,
                 run_log: RunLog, progress: Progress, claims: ClaimSet) -> None:
        self.slides, self.dirs = list(slides), list(dirs)
        self.bundle, self.options, self.run_log, self.progress = bundle, options, run_log, progress
        self.claims = claims
        self.decided: dict[int, Decision] = {}
        self.batch_started = time.time()  # outputs written after this, with --overwrite, are this batch's
        self.results: dict[int, SlideResult] = {}
        self.started: dict[int, float] = {}
        self.pending: tuple[int, Future[SlideResult], StitchedSlide] | None = None  # outputs being written
        self.planned: dict[int, Future[PlannedSlide]] = {}  # slides planned ahead
        self.on_result: Callable[[SlideResult], None] | None = None  # told of each result once recorded
        self.slide_mpp: dict[int, float] = {}  # slide index -> its own pixel size (a list CSV's mpp column)
        self.slide_roi: dict[int, Path] = {}  # slide index -> its own regions file (a list CSV's roi column)
        self.stop: threading.Event | None = None  # once set, the batch stops (BatchStopped)
        self.created: set[Path] = set()  # output folders this process made
        self.unclaimed: set[int] = set()  # slides run without a claim (their folder refused the claim file)
        self.holders: dict[int, str] = {}  # slide index -> host:pid of the other process last seen holding it
        self.waiting: list[int] = []  # slides held by other processes, to go back to at the end of the list

    def opts(self, i: int) -> SegmentOptions:
        """The options of slide i: the batch's, with the slide's own pixel size and regions where the list gives
        them."""
        own: dict[str, Any] = {}
        if i in self.slide_mpp:
            own["override_mpp"] = self.slide_mpp[i]
        if i in self.slide_roi:
            own["roi"] = self.slide_roi[i]
        return dataclasses.replace(self.options, **own) if own else self.options

    def check_stop(self) -> None:
        """Raise BatchStopped once the batch's `stop` is set."""
        if self.stop is not None and self.stop.is_set():
            raise BatchStopped()

    def decide(self, i: int) -> Decision:
        """Whether this process runs slide i (claimed here), skips it (complete before this batch) or leaves it
        to another process (claimed by it, or done by it during this batch: that process records it)."""
        if i not in self.decided:
            self.decided[i] = self._decide(i)
        return self.decided[i]

    def _decide(self, i: int) -> Decision:
        out_dir, options, slide = self.dirs[i], self.opts(i), self.slides[i]
        first = decide(slide, out_dir, self.bundle, options, since=self.batch_started, log_rerun=False)
        if not first.run:
            return self._left_behind(i, first)
        try:
            if not self._claim(i):
                return _CLAIMED_ELSEWHERE
        except ClaimBlocked as exc:
            return Decision("refused", one_line(exc))
        again = decide(slide, out_dir, self.bundle, options, since=self.batch_started)  # done meanwhile?
        if again.run:
            return again
        mine = self.claims.claim_of(out_dir)
        self.claims.release(out_dir)
        if again.kind == "claimed" and mine is not None and mine.epoch > 1:  # its writer died before recording
            return _COMPLETED_UNRECORDED
        return again

    def _left_behind(self, i: int, decision: Decision) -> Decision:
        """A slide not to run (complete, or done by another process during this batch) whose folder still holds a
        claim: one its holder left behind (killed after its report.json, before recording the slide or releasing
        the claim) is taken over and removed, and the slide is then recorded here as skipped; a live holder's
        claim is left to it (it records the slide)."""
        out_dir = self.dirs[i]
        if not (out_dir / CLAIM_NAME).exists():
            return decision
        try:
            if not self.claims.try_claim(out_dir):
                return decision
        except (ClaimBlocked, OSError):
            return decision
        mine = self.claims.claim_of(out_dir)
        self.claims.release(out_dir)
        if decision.kind == "claimed" and mine is not None and mine.epoch > 1:
            return _COMPLETED_UNRECORDED
        return decision

    def _claim(self, i: int) -> bool:
        out_dir = self.dirs[i]
        if not out_dir.exists():
            self.created.add(out_dir)
        try:
            if self.claims.try_claim(out_dir):
                return True
        except ClaimBlocked:
            raise
        except OSError as exc:  # the folder cannot be written: the slide then fails alone, naming the cause
            log.warning("%s: cannot write its claim file (%s); the slide runs unclaimed", out_dir, one_line(exc))
            self.unclaimed.add(i)
            return True
        holder = holder_of(out_dir)
        if holder is not None:
            self.holders[i] = holder
        return False

    def _plan(self, i: int) -> PlannedSlide:
        fence = None if i in self.unclaimed else self.claims.fence(self.dirs[i])
        return stages.plan_slide(self.slides[i], self.bundle, self.opts(i), self.dirs[i], fence=fence)

    def run(self, backend: Backend) -> None:
        overlap = self.options.overlap_slides and len(self.slides) > 1
        # One worker, FIFO: the outputs of slide i-1 are queued before slide i+1's plan, so an interruption
        # only ever cancels a plan, never the outputs of a slide whose tiles are done.
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slidefuse-slide") if overlap else None
        try:
            for i in range(len(self.slides)):
                self._one(i, backend, pool)
            self._settle()
            self._finish_the_list(backend)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)  # lets an output being written finish
            for ahead in self.planned.values():  # planned ahead but never run (interrupted): close the slides
                if ahead.done() and not ahead.cancelled() and ahead.exception() is None:
                    ahead.result().close()
            self._settle_interrupted()
            self._clean_held()

    def _clean_held(self) -> None:
        """Interrupted: remove what this process left in the folders it still holds (never in one whose claim
        another process has taken over)."""
        for out_dir in self.claims.held():
            try:
                self.claims.check(out_dir)
            except ClaimLost:
                continue
            clean_temporaries(out_dir)

    def _settle_interrupted(self) -> None:
        """After an interruption: record the slide whose outputs were written; remove the raw mask of one whose
        outputs never started (cancelled)."""
        if self.pending is None:
            return
        _, writing, done = self.pending
        if writing.cancelled():
            self.pending = None
            done.result.remove_scratch()
        elif writing.done():
            self._settle()

    def _not_run(self, i: int, decision: Decision) -> None:
        slide, out_dir = self.slides[i], self.dirs[i]
        self._settle()
        if decision.status == Status.SKIPPED:
            log.info("%s: outputs in %s are complete for this bundle; skipped (--overwrite redoes it)",
                     slide, out_dir)
            self._record(i, SlideResult(slide, Status.SKIPPED, out_dir))
            self.progress.end_slide(Status.SKIPPED)
        elif decision.status == Status.FAILED:
            self._record(i, SlideResult(slide, Status.FAILED, out_dir, _with_slide(slide, decision.reason)))
            self.progress.end_slide(Status.FAILED)
        elif decision is _CLAIMED_ELSEWHERE and self.options.wait:
            log.info("%s: held by %s; back to it once the rest of the list is done", slide,
                     self.holders.get(i, "another process"))
            self.waiting.append(i)
            self.progress.end_slide("held by another process; back to it at the end")
        else:
            self._left(i)

    def _left(self, i: int) -> None:
        """Slide i is left to another process (which holds it, did it, or failed it)."""
        slide, out_dir = self.slides[i], self.dirs[i]
        log.info("%s: done or being done by another process sharing %s; left to it", slide, out_dir.parent)
        self.results[i] = SlideResult(slide, Status.CLAIMED, out_dir, holder=self.holders.get(i))
        if self.on_result is not None:
            self.on_result(self.results[i])
        self.progress.end_slide("claimed by another process")

    def _finish_the_list(self, backend: Backend) -> None:
        """Go back to the slides other processes held: wait while their holders live (polling with backoff, at
        most every min(heartbeat, MAX_POLL) s), take over those whose holder stopped, and leave those done or
        failed by their holder. Without `options.wait`, `waiting` is empty."""
        if self.waiting:
            log.info("waiting for %d slide(s) held by other processes (%s)", len(self.waiting),
                     ", ".join(sorted({self.holders.get(i, "?") for i in self.waiting})))
        delay, longest = 0.05, min(self.claims.policy.interval, MAX_POLL)
        while self.waiting:
            self._pause(delay)
            delay = min(2 * delay, longest)
            for i in list(self.waiting):
                self.decided.pop(i, None)
                decision = self.decide(i)
                if decision is _CLAIMED_ELSEWHERE:
                    continue
                self.waiting.remove(i)
                self._back_to(i, decision, backend)

    def _pause(self, seconds: float) -> None:
        if self.stop is None:
            time.sleep(seconds)
        elif self.stop.wait(seconds):
            raise BatchStopped()

    def _back_to(self, i: int, decision: Decision, backend: Backend) -> None:
        """Slide i, no longer held by another process: run it (its holder stopped), or leave it (done, or
        failed by its holder: that process recorded it)."""
        if decision.run and self._failed_elsewhere(i):
            self.claims.release(self.dirs[i])
            self._left(i)
            return
        self.progress.start_slide(i + 1, len(self.slides), self.slides[i].name)
        if decision.run:
            log.info("%s: no longer held by %s; segmenting it", self.slides[i], self.holders.get(i, "another process"))
            self._one(i, backend, None, announced=True)
            self._settle()
        else:
            self._not_run(i, decision)

    def _failed_elsewhere(self, i: int) -> bool:
        """Whether another process recorded slide i as failed during this batch (its holder gave it up)."""
        key = str(resolved(self.slides[i]))
        for e in reversed(read_records(self.run_log.out_root)):
            if e.get("slide_key") == key and float(e.get("t") or 0.0) >= self.batch_started and \
                    e.get("run_id") != self.run_log.run_id and e["status"] == Status.FAILED:
                self.holders[i] = f"{e.get('host')}:{e.get('pid')}"
                return True
        return False

    def _next_to_run(self, i: int) -> int | None:
        return next((j for j in range(i + 1, len(self.slides)) if self.decide(j).run), None)

    def _one(self, i: int, backend: Backend, pool: ThreadPoolExecutor | None, *, announced: bool = False) -> None:
        self.check_stop()
        slide, out_dir = self.slides[i], self.dirs[i]
        if not announced:
            self.progress.start_slide(i + 1, len(self.slides), slide.name)
        self.started[i] = time.perf_counter()
        decision = self.decide(i)
        if not decision.run:
            self._not_run(i, decision)
            return
        try:
            ahead = self.planned.pop(i, None)
            plan = ahead.result() if ahead is not None else self._plan(i)
            nxt = self._next_to_run(i) if pool is not None else None
            if pool is not None and nxt is not None:
                self.planned[nxt] = pool.submit(self._plan, nxt)
            done = stages.infer_slide(plan, self.bundle, self.opts(i), backend, _Watch(self.progress, self, out_dir))
        except Exception as exc:  # recorded with its slide; the batch goes on
            self._settle()
            res = self._failed(i, exc)
            self._record(i, res)
            self.progress.end_slide(res.status)
            return
        self._settle()
        if pool is None:
            res = self._finish(i, done)
            self._publish(i, res)
            self.progress.end_slide(res.status)
        else:
            self.pending = (i, pool.submit(self._finish, i, done), done)
            self.progress.end_slide("tiles done; outputs being written")

    def _finish(self, i: int, done: StitchedSlide) -> SlideResult:
        """Write slide i's outputs and record it at once (the run log and the claim cannot wait for the next
        slide's tiles: a process killed meanwhile must not leave finished outputs unrecorded)."""
        return self._commit(i, self._write(i, done))

    def _write(self, i: int, done: StitchedSlide) -> SlideResult:
        run_info: dict[str, object] = {"run_id": self.claims.run_id}
        mine = self.claims.claim_of(self.dirs[i])
        if mine is not None:
            run_info["claim"] = {"owner": mine.owner, "epoch": mine.epoch}
        try:
            return stages.finish_slide(done, self.bundle, self.opts(i), run_info=run_info)
        except Exception as exc:
            done.result.remove_scratch()  # never leave the raw mask behind a failed slide
            return self._failed(i, exc)

    def _failed(self, i: int, exc: BaseException) -> SlideResult:
        slide = self.slides[i]
        if isinstance(exc, ClaimLost):
            return self._lost(i, exc)
        reason = _with_slide(slide, one_line(exc))
        log.warning("failed: %s", reason)
        log.debug("traceback of the failure of %s", slide, exc_info=exc)
        return SlideResult(slide, Status.FAILED, self.dirs[i], reason, seconds=time.perf_counter() - self.started[i])

    def _lost(self, i: int, exc: ClaimLost) -> SlideResult:
        slide = self.slides[i]
        reason = _with_slide(slide, one_line(exc))
        log.info("claim lost: %s", reason)
        return SlideResult(slide, Status.CLAIM_LOST, self.dirs[i], reason,
                           seconds=time.perf_counter() - self.started.get(i, time.perf_counter()), holder=exc.holder)

    def _fenced(self, i: int, res: SlideResult) -> SlideResult:
        """`res`, unless this process no longer holds slide i's claim (checked in the claim file): then its
        record says so ("claim_lost"), whatever it did, so that it never stands over the new holder's."""
        out_dir = self.dirs[i]
        if res.status not in (Status.OK, Status.FAILED) or i in self.unclaimed:
            return res
        if self.claims.claim_of(out_dir) is None and self.claims.lost(out_dir) is None:
            return res  # never claimed here (e.g. refused)
        try:
            self.claims.check(out_dir)
        except ClaimLost as exc:
            return self._lost(i, exc)
        return res

    def _settle(self) -> None:
        """Wait for the outputs being written in the background (which records the slide), and publish it."""
        if self.pending is not None:
            i, fut, _ = self.pending
            res = fut.result()  # an interruption here keeps it pending: it is settled on the way out
            self.pending = None
            self._publish(i, res)

    def _record(self, i: int, res: SlideResult) -> None:
        self._publish(i, self._commit(i, res))

    def _commit(self, i: int, res: SlideResult) -> SlideResult:
        """Record slide i in the run log (fenced) and release its claim; returns the result as recorded."""
        res = self._fenced(i, res)
        extra = {"holder": res.holder} if res.status == Status.CLAIM_LOST else {}
        self.run_log.record(res.slide, res.status, error=res.error, out_dir=res.out_dir, outputs=res.outputs,
                            seconds=res.seconds if res.status == Status.OK else time.perf_counter() - self.started[i],
                            tiles=res.tile_counts or None, backend=self.options.backend,
                            decode_errors=res.decode_errors, **extra)
        self.claims.release(self.dirs[i])
        return res

    def _publish(self, i: int, res: SlideResult) -> None:
        """Slide i's result, as recorded, for the caller."""
        self.results[i] = res
        if self.on_result is not None:
            self.on_result(res)
