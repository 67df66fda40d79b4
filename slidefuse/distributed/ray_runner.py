"""`slidefuse segment ... --ray [ADDRESS]`: slides spread over a Ray cluster's workers.

The driver (the `slidefuse segment` process) lists the slides, skips those already complete, writes the
shared-storage token into OUT, starts one long-lived worker actor per GPU (or per `cpus_per_worker` CPU
cores), checks that every worker sees OUT, and hands out slides from a queue, two per worker at a time (so a
worker plans its next slide and writes its last one's outputs while a slide's tiles run). Results stream
back as they finish: the driver records each in OUT/run.json and reports progress (slides done / failed /
in flight, tiles/s across the cluster, ETA). A worker that dies mid-slide (killed, out of memory, node
lost) has its slides retried on another worker, up to `retries` more times, and is replaced; its claim is
taken over at once and its partial files are only ever `*.partial` / `mask.raw.tmp`, never a final name.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from slidefuse.distributed.worker import SlideOutcome, SlideTask, SlideWorker, WorkerSetup
from slidefuse.errors import SlidefuseError, UsageError, require
from slidefuse.numbers import finite_float, integer
from slidefuse.runtime.bundle import Bundle
from slidefuse.runtime.segment.options import SegmentOptions, SlideResult
from slidefuse.runtime.segment.runlog import RunLog
from slidefuse.runtime.types import Status

log = logging.getLogger(__name__)

SLIDES_PER_WORKER = 2  # slides in flight per worker: one on the backend, one being planned or written


class WorkerStartError(SlidefuseError, RuntimeError):
    """A Ray worker that could not start (bundle unreadable there, backend unavailable there, ...)."""


@dataclass(frozen=True)
class RayConfig:
    """How a run uses the cluster."""

    address: str | None = "auto"  # Ray address; "auto" = the running cluster, else a new local one
    workers: int | None = None  # worker actors; None = one per GPU (GPU backends) or per cpus_per_worker CPUs
    cpus_per_worker: int = 1  # CPU cores reserved by each worker (and its engine threads on CPU backends)
    gpus_per_worker: float | None = None  # None = 1 on a cluster with GPUs for a GPU backend, else 0
    retries: int = 2  # times a slide is retried after its worker died
    status_interval: float = 10.0  # seconds between progress reports (and one per finished slide)
    ready_timeout: float = 300.0  # seconds to wait for the workers to start

    def __post_init__(self) -> None:
        # each field with its name in `slidefuse segment`'s options (the CLI maps that name to the flag)
        for field, name, minimum in (("ray_cpus_per_worker", "cpus_per_worker", 1), ("retries", "retries", 0),
                                     ("ray_workers", "workers", 1)):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, integer(value, field=field, minimum=minimum))
        if self.gpus_per_worker is not None:
            object.__setattr__(self, "gpus_per_worker", finite_float(self.gpus_per_worker, field="gpus_per_worker",
                                                                     minimum=0))
        for seconds in ("status_interval", "ready_timeout"):
            object.__setattr__(self, seconds, finite_float(getattr(self, seconds), field=seconds, above=0))


@dataclass(frozen=True)
class ClusterStatus:
    """Progress of a cluster run, as the driver reports it."""

    total: int  # slides in the run
    done: int  # slides segmented (ok)
    skipped: int  # slides already complete, or done by another process sharing OUT
    failed: int  # slides that failed
    in_flight: int  # slides being worked on now
    workers: int  # live workers
    tiles: int  # tiles stitched across the cluster so far
    elapsed: float  # seconds since the workers were ready

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate slides have finished so far; None before the first one."""
        finished = self.done + self.failed
        left = self.total - finished - self.skipped
        return self.elapsed / finished * left if finished else None

    def line(self) -> str:
        eta = "?" if self.eta is None else time.strftime("%H:%M:%S", time.gmtime(self.eta))
        return (f"{self.done + self.skipped + self.failed}/{self.total} slides: {self.done} done, {self.skipped} "
                f"skipped, {self.failed} failed, {self.in_flight} in flight on {self.workers} worker(s); "
                f"{self.tiles_per_s:.1f} tiles/s; ETA {eta}")


def _connect(address: str | None) -> tuple[Any, bool]:
    """(the ray module, whether this call started Ray and must shut it down). The caller's SIGTERM handler (the
    command line's: clean up, exit 143) is put back after Ray's start, which replaces it with one that aborts."""
    ray = require("ray", "ray", "slidefuse segment --ray")
    if ray.is_initialized():
        return ray, False
    kw: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    on_sigterm = signal.getsignal(signal.SIGTERM)
    if address in (None, "", "auto"):
        try:
            ray.init(address="auto", **kw)
        except ConnectionError:
            log.info("no running Ray cluster found: starting a local one")
            ray.init(**kw)
    else:
        ray.init(address=address, **kw)
    if callable(on_sigterm) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)
    return ray, True


def _worker_resources(ray: Any, options: SegmentOptions, config: RayConfig) -> tuple[int, float, dict[str, Any]]:
    """(number of workers, GPUs per worker, backend options per worker) for this cluster."""
    from slidefuse.runtime.backends.registry import AUTO, get_backend

    res = ray.cluster_resources()
    cpus, gpus = int(res.get("CPU", 0)), int(res.get("GPU", 0))
    cls = None if options.backend == AUTO else get_backend(options.backend)
    gpu_backend = gpus > 0 and (cls is None or cls.device != "cpu")
    per_gpu = config.gpus_per_worker if config.gpus_per_worker is not None else (1.0 if gpu_backend else 0.0)
    fit = int(gpus // per_gpu) if per_gpu > 0 else cpus // config.cpus_per_worker
    n = config.workers or fit
    if n < 1 or n > fit:
        raise UsageError(f"the Ray cluster has {cpus} CPU(s) and {gpus} GPU(s): room for {fit} worker(s) of "
                         f"{config.cpus_per_worker} CPU(s) and {per_gpu:g} GPU(s), not {n}; lower "
                         "ray_workers=<workers> or ray_cpus_per_worker=<cpus>, or add nodes", field="ray_workers")
    backend_options = dict(options.backend_options)
    if "device_id" in backend_options and per_gpu > 0:
        raise UsageError(f"device_id={backend_options['device_id']} cannot be used on Ray: Ray gives each worker "
                         "its own GPU; leave it out", field="device_id")
    if per_gpu == 0 and cls is not None and "threads" in cls.options_type.keys():
        backend_options.setdefault("threads", config.cpus_per_worker)
    return n, per_gpu, backend_options


def _refuse_per_slide_mpp(list_file: Path | None) -> None:
    """The workers plan with the batch's options: a list CSV's per-slide mpp is refused, never ignored."""
    from slidefuse.errors import UsageError
    from slidefuse.runtime.segment.inputs import list_overrides

    if any(e.mpp is not None for e in list_overrides(list_file).values()):
        raise UsageError(f"{list_file}: a per-slide mpp column is not supported on Ray yet; run without Ray, "
                         "or drop the column and pass mpp=<um/px>")
    if any(e.roi is not None for e in list_overrides(list_file).values()):
        raise UsageError(f"{list_file}: a per-slide roi column is not supported on Ray yet; run without Ray")


def segment_on_ray(
    paths: Sequence[Path],
    bundle: Bundle,
    out_root: Path,
    options: SegmentOptions,
    config: RayConfig | None = None,
    *,
    list_file: Path | None = None,
    on_status: Callable[[ClusterStatus], None] | None = None,
) -> list[SlideResult]:
    """Segment every slide (as `segment_many`) on a Ray cluster; returns one SlideResult per slide in input
    order. Outputs go to `out_root`, which every node must see (refused otherwise, naming the node)."""
    from slidefuse.runtime.segment.claims import new_run_id
    from slidefuse.runtime.segment.options import effective_overlap
    from slidefuse.runtime.segment.scheduler import batch_slides, check_one_roi

    config = config or RayConfig()
    out_root = Path(out_root).absolute()
    effective_overlap(bundle, options)
    slides, dirs = batch_slides([Path(p).absolute() for p in paths], list_file, out_root, options.shard)
    _refuse_per_slide_mpp(list_file)
    check_one_roi(options, len(slides))
    if options.roi is not None:  # the workers may run in another folder
        options = replace(options, roi=options.roi.absolute())
    run_id = new_run_id()
    ray, started = _connect(config.address)  # before OUT is touched: a missing extra changes nothing
    try:
        out_root.mkdir(parents=True, exist_ok=True)
        driver = _Driver(ray, slides, dirs, bundle, out_root, options, config, RunLog(out_root, run_id=run_id),
                         on_status or (lambda s: log.info("%s", s.line())))
        return driver.run()
    finally:
        if started:
            ray.shutdown()


class _Driver:
    """The queue of slides, the workers, and what came back."""

    def __init__(self, ray: Any, slides: list[Path], dirs: list[Path], bundle: Bundle, out_root: Path,
                 options: SegmentOptions, config: RayConfig, run_log: RunLog,
                 on_status: Callable[[ClusterStatus], None]) -> None:
        self.ray, self.slides, self.dirs, self.bundle = ray, slides, dirs, bundle
        self.out_root, self.options, self.config, self.run_log = out_root, options, config, run_log
        self.on_status = on_status
        self.results: dict[int, SlideResult] = {}
        self.queue: deque[SlideTask] = deque()
        self.in_flight: dict[Any, tuple[SlideTask, Any]] = {}  # ObjectRef -> (task, actor)
        self.workers: list[Any] = []
        self.tiles: dict[Any, int] = {}  # actor -> tiles it reported (kept after it dies)
        self.t0 = time.monotonic()
        self._last_status = 0.0

    def run(self) -> list[SlideResult]:
        from slidefuse.distributed.storage import write_token
        from slidefuse.runtime.segment.skip import decide

        for i, (slide, out_dir) in enumerate(zip(self.slides, self.dirs, strict=True)):
            # the workers decide again, claimed (and log why a slide runs again)
            decision = decide(slide, out_dir, self.bundle, self.options, log_rerun=False)
            if decision.status is not None:
                self._record(i, SlideResult(slide, decision.status, out_dir), None)
            else:
                self.queue.append(SlideTask(i, slide, out_dir))
        token_path, token = write_token(self.out_root, self.run_log.run_id)
        try:
            if self.queue:
                self._start_workers(token_path, token)
                self._loop()
        finally:
            self._stop_workers()
            token_path.unlink(missing_ok=True)
        return [self.results[i] for i in range(len(self.slides))]

    def _start_workers(self, token_path: Path, token: str) -> None:
        n, per_gpu, backend_options = _worker_resources(self.ray, self.options, self.config)
        n = min(n, len(self.queue))
        setup = WorkerSetup(self.bundle.path, self.options, self.out_root, token_path, token, self.run_log.run_id,
                            backend_options)
        self.actor_cls = self.ray.remote(num_cpus=self.config.cpus_per_worker, num_gpus=per_gpu,
                                         max_concurrency=SLIDES_PER_WORKER + 1)(SlideWorker)
        self.setup = setup
        self.workers = [self.actor_cls.remote(setup) for _ in range(n)]
        self._check_ready(self.workers)
        log.info("%d Ray worker(s) ready on %d node(s); %d slide(s) to run", n,
                 len([x for x in self.ray.nodes() if x.get("Alive")]), len(self.queue))
        self.t0 = time.monotonic()

    def _check_ready(self, workers: list[Any]) -> None:
        from slidefuse.distributed.storage import SharedStorageError

        refs = [w.ready.remote() for w in workers]
        done, pending = self.ray.wait(refs, num_returns=len(refs), timeout=self.config.ready_timeout)
        if pending:
            raise WorkerStartError(f"{len(pending)} Ray worker(s) did not start within "
                                   f"{self.config.ready_timeout:.0f} s (not enough free CPUs/GPUs on the cluster?)")
        for info in self.ray.get(refs):
            if info.error is not None:
                cls = WorkerStartError if info.sees_out else SharedStorageError
                raise cls(f"Ray worker {info.worker} on node {info.node[:12]}: {info.error}")

    def _submit(self) -> None:
        load = {id(w): 0 for w in self.workers}
        for _, actor in self.in_flight.values():
            load[id(actor)] = load.get(id(actor), 0) + 1
        for w in sorted(self.workers, key=lambda a: load[id(a)]):
            while self.queue and load[id(w)] < SLIDES_PER_WORKER:
                task = self.queue.popleft()
                self.in_flight[w.run.remote(task)] = (task, w)
                load[id(w)] += 1

    def _loop(self) -> None:
        while self.queue or self.in_flight:
            if not self.workers:
                raise WorkerStartError("every Ray worker died and none could be restarted; see the Ray logs "
                                       "(/tmp/ray/session_latest/logs) on the nodes")
            self._submit()
            ready, _ = self.ray.wait(list(self.in_flight), num_returns=1, timeout=1.0)
            for ref in ready:
                task, actor = self.in_flight.pop(ref)
                self._collect(ref, task, actor)
            self._status(force=bool(ready))

    def _collect(self, ref: Any, task: SlideTask, actor: Any) -> None:
        try:
            outcome: SlideOutcome = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:
            self._worker_died(actor, task, exc)
            return
        self._record(task.index, outcome.result, outcome)

    def _worker_died(self, actor: Any, task: SlideTask, exc: BaseException) -> None:
        if actor in self.workers:
            log.warning("a Ray worker died (%s); replacing it", type(exc).__name__)
            self.workers.remove(actor)
            fresh = self.actor_cls.remote(self.setup)
            try:
                self._check_ready([fresh])
                self.workers.append(fresh)
            except Exception as err:  # the run goes on with the other workers
                log.warning("the replacement worker did not start: %s", err)
        if task.attempt <= self.config.retries:
            log.info("%s: its worker died during attempt %d; retrying", task.slide, task.attempt)
            supersede = f"{self.run_log.run_id}:{task.owner}"
            self.queue.appendleft(replace(task, attempt=task.attempt + 1, supersede=supersede))
            return
        reason = f"{task.slide}: its Ray worker died on each of {task.attempt} attempts; last: {type(exc).__name__}"
        self._record(task.index, SlideResult(task.slide, Status.FAILED, task.out_dir, reason), None)

    def _record(self, i: int, res: SlideResult, outcome: SlideOutcome | None) -> None:
        self.results[i] = res
        if res.status == Status.CLAIMED:
            return  # another process records it
        extra = {"attempt": outcome.task.attempt, "worker": outcome.worker} if outcome is not None else {}
        self.run_log.record(res.slide, res.status, error=res.error, out_dir=res.out_dir, outputs=res.outputs,
                            seconds=res.seconds, tiles=res.tile_counts or None, backend=self.options.backend,
                            decode_errors=res.decode_errors, **extra)
        if res.status == Status.FAILED:
            log.warning("failed: %s", res.error)

    def _status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_status < self.config.status_interval:
            return
        self._last_status = now
        refs = {w: w.tiles_done.remote() for w in self.workers}
        done, _ = self.ray.wait(list(refs.values()), num_returns=len(refs), timeout=2.0)
        for w, ref in refs.items():
            if ref in done:
                try:
                    self.tiles[w] = self.ray.get(ref)
                except self.ray.exceptions.RayError:
                    pass
        statuses = [r.status for r in self.results.values()]
        self.on_status(ClusterStatus(
            total=len(self.slides), done=statuses.count(Status.OK),
            skipped=statuses.count(Status.SKIPPED) + statuses.count(Status.CLAIMED),
            failed=statuses.count(Status.FAILED),
            in_flight=len(self.in_flight), workers=len(self.workers), tiles=sum(self.tiles.values()),
            elapsed=now - self.t0))

    def _stop_workers(self) -> None:
        closing = [w.close.remote() for w in self.workers]
        if closing:
            self.ray.wait(closing, num_returns=len(closing), timeout=30.0)
        for w in self.workers:
            self.ray.kill(w)
        self.workers = []
