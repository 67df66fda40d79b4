"""The Ray worker: one long-lived process per GPU (or per N CPU cores) holding an open backend.

`SlideWorker` is a plain class; the driver makes it a Ray actor (`ray.remote(...)(SlideWorker)`) with the
resources of one worker and a concurrency of two, so that while one slide's tiles run on the backend
(`infer_slide`, one slide at a time under a lock), the next slide is planned and the previous one's outputs
are written on the actor's other thread: the same three stages (`runtime/segment/stages.py`) as a single
process, overlapped the same way. Each slide is claimed (`OUT/<slide>/.lock`) while it runs, so Ray workers
and plain `slidefuse segment` processes on the same OUT never do a slide twice, and its files are written
under the claim's fence: a worker whose claim was taken over (a retry superseding an attempt thought dead, or
a plain process after the timeout) stops the slide with status "claim_lost" and leaves the new holder's files.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slidefuse.errors import ClaimBlocked, ClaimLost, one_line
from slidefuse.runtime.progress import Progress
from slidefuse.runtime.segment.options import SegmentOptions, SlideResult
from slidefuse.runtime.types import Status

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlideTask:
    """One slide, as the driver hands it to a worker."""

    index: int  # position in the run's slide list
    slide: Path  # slide file, as given
    out_dir: Path  # OUT/<slide stem> (the whole list's names)
    attempt: int = 1  # 1 = first try; more after a worker died on this slide
    supersede: str | None = None  # claim owner of the attempt that died (its claim is taken over at once)

    @property
    def owner(self) -> str:
        return f"task-{self.index}-attempt-{self.attempt}"


@dataclass(frozen=True)
class SlideOutcome:
    """What a worker did with a task."""

    task: SlideTask
    result: SlideResult  # status OK, FAILED, SKIPPED (already complete) or CLAIMED (another process)
    worker: str  # host:pid of the worker
    owner: str  # the claim owner it ran under (run id + task + attempt)


@dataclass
class WorkerSetup:
    """Everything a worker needs, sent once when it starts."""

    bundle: Path  # the bundle folder (on storage every node sees)
    options: SegmentOptions
    out_root: Path
    token_path: Path  # the driver's shared-storage token (see `storage`)
    token: str
    run_id: str
    backend_options: dict[str, Any] = field(default_factory=dict)  # options for this worker's backend
    started: float = field(default_factory=time.time)  # the batch's start (with --overwrite: newer is this run's)


@dataclass(frozen=True)
class WorkerReady:
    """A worker's answer once started."""

    worker: str  # host:pid
    node: str  # Ray node id
    error: str | None  # None when it can work; else the one-line reason it cannot
    sees_out: bool  # False: OUT is not shared with this node (the driver's token is not visible here)
    backend: dict[str, Any] | None  # BackendInfo.to_dict() of its open backend


def _with_slide(slide: Path, reason: str) -> str:
    return reason if str(slide) in reason else f"{slide}: {reason}"


class _TileCounter(Progress):
    """Counts the tiles this worker has stitched (for the driver's tiles/s across the cluster)."""

    def __init__(self) -> None:
        self.total = 0
        self._last = 0
        self._lock = threading.Lock()

    def update(self, done_tiles: int, total_tiles: int) -> None:
        with self._lock:
            if done_tiles < self._last or done_tiles == 0:
                self._last = 0
            self.total += done_tiles - self._last
            self._last = done_tiles


class SlideWorker:
    """A worker: checks it sees OUT, loads the bundle and opens the backend once, then runs slides."""

    def __init__(self, setup: WorkerSetup) -> None:
        self.setup = setup
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.error: str | None = None
        self.sees_out = True
        self.tiles = _TileCounter()
        self._infer = threading.Lock()
        self._backend: Any = None
        self._claims: Any = None
        from slidefuse.distributed.storage import SharedStorageError

        try:
            self._start()
        except Exception as exc:  # reported by `ready`, so that the driver names this node
            self.error = one_line(exc)
            self.sees_out = not isinstance(exc, SharedStorageError)

    def _start(self) -> None:
        from slidefuse.distributed.storage import check_token
        from slidefuse.runtime.backends import open_backend
        from slidefuse.runtime.bundle import load_bundle
        from slidefuse.runtime.segment.claims import ClaimPolicy, ClaimSet

        s = self.setup
        check_token(s.token_path, s.token)
        self.bundle = load_bundle(s.bundle)
        self._backend = open_backend(s.options.backend, self.bundle, **s.backend_options).__enter__()
        self._claims = ClaimSet(s.run_id, ClaimPolicy(timeout=s.options.claim_timeout)).__enter__()

    def ready(self) -> WorkerReady:
        """Whether this worker can work, and where it runs."""
        import ray

        info = self._backend.info().to_dict() if self._backend is not None else None
        return WorkerReady(self.name, ray.get_runtime_context().get_node_id(), self.error, self.sees_out, info)

    def pid(self) -> int:
        return os.getpid()

    def tiles_done(self) -> int:
        """Tiles stitched by this worker so far (finished slides and the slides in progress)."""
        return self.tiles.total

    def run(self, task: SlideTask) -> SlideOutcome:
        """Claim, plan, infer (one slide at a time on the backend), finish; never raises for a slide's own
        failure (status "failed" with the one-line reason, or "claim_lost" when its claim was taken over)."""
        s, t0 = self.setup, time.perf_counter()
        owner = f"{s.run_id}:{task.owner}"
        try:
            claimed = self._claims.try_claim(task.out_dir, owner=owner, supersede=task.supersede)
        except ClaimBlocked as exc:  # a folder where the claim file goes: the slide fails, naming it
            return SlideOutcome(task, SlideResult(task.slide, Status.FAILED, task.out_dir, one_line(exc)), self.name,
                                owner)
        if not claimed:
            return SlideOutcome(task, SlideResult(task.slide, Status.CLAIMED, task.out_dir), self.name, owner)
        try:
            res = self._run_claimed(task)
            if res.status in (Status.OK, Status.FAILED):
                self._claims.check(task.out_dir)  # the driver records it: only while the claim is still ours
        except ClaimLost as exc:
            res = SlideResult(task.slide, Status.CLAIM_LOST, task.out_dir, _with_slide(task.slide, one_line(exc)),
                              seconds=time.perf_counter() - t0, holder=exc.holder)
        except Exception as exc:
            res = SlideResult(task.slide, Status.FAILED, task.out_dir, _with_slide(task.slide, one_line(exc)),
                              seconds=time.perf_counter() - t0)
        finally:
            self._claims.release(task.out_dir)
        return SlideOutcome(task, res, self.name, owner)

    def _run_claimed(self, task: SlideTask) -> SlideResult:
        from slidefuse.runtime.segment import stages
        from slidefuse.runtime.segment.skip import decide

        s = self.setup
        decision = decide(task.slide, task.out_dir, self.bundle, s.options, since=s.started)
        if decision.status is not None:  # skipped, or done by another process during this batch
            return SlideResult(task.slide, decision.status, task.out_dir)
        mine = self._claims.claim_of(task.out_dir)
        plan = stages.plan_slide(task.slide, self.bundle, s.options, task.out_dir,
                                 fence=self._claims.fence(task.out_dir))  # an attempt's leftovers go first
        with self._infer:
            done = stages.infer_slide(plan, self.bundle, s.options, self._backend, self.tiles)
        run_info = {"run_id": s.run_id, "attempt": task.attempt, "worker": self.name,
                    "claim": {"owner": mine.owner, "epoch": mine.epoch} if mine is not None else None}
        return stages.finish_slide(done, self.bundle, s.options, run_info=run_info)

    def close(self) -> None:
        """Release the claims and close the backend."""
        if self._claims is not None:
            self._claims.__exit__(None, None, None)
        if self._backend is not None:
            self._backend.__exit__(None, None, None)
