"""The streaming pipeline: reader threads -> preallocated batches -> backend -> stitcher, overlapped in time.

Threads and queues (all bounded, so memory is a fixed number of batches plus the stitcher's band):

- a *feeder* thread takes a free preallocated uint8 batch buffer ``[B, T, T, 3]``, asks the reader pool to fill
  its slots (one task per run of neighbouring tiles; libvips releases the GIL, so reads run in parallel) and
  queues the batch, up to ``prefetch`` batches ahead;
- an *inference* thread waits for a batch's reads, runs ``backend.run`` on it, hands the buffer back to the
  free pool and queues the probabilities;
- the calling thread stitches results in order.

The backend is any open ``Runner`` (``backends.base``: uint8 ``[B, T, T, 3]`` -> float32 ``[B, C, T, T]``). A batch
buffer goes back to the free pool as soon as ``backend.run`` returns, so runners must not keep a reference to their
input, and must return an array they do not reuse.

Order is preserved (one feeder, one inference thread, FIFO queues). An exception in any thread stops the
others and is re-raised in the calling thread; nothing hangs and no tile is silently dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from slidefuse.runtime.backends.base import Runner
from slidefuse.runtime.grid import TileGrid, TileRC


class TileSink(Protocol):
    """Where the pipeline hands each tile's result, in row-major order: the `Stitcher` (probabilities
    [C, T, T]) or an embedding writer (embeddings [D])."""

    def add(self, tile_rc: TileRC, result: np.ndarray, /) -> None: ...

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]  # (tiles done, tiles total)


class TileSource(Protocol):
    """What the pipeline reads from (``slide.ScaledView``): model-frame boxes -> uint8 ``[h, w, 3]`` RGB."""

    def read(self, model_x: int, model_y: int, w: int, h: int) -> np.ndarray: ...


@dataclass(frozen=True)
class PipelineOptions:
    batch_size: int = 8  # tiles per backend call
    workers: int = 4  # reader threads
    prefetch: int = 2  # batches read ahead of the engine (buffers = prefetch + 2)
    run_length: int = 4  # at most this many neighbouring tiles of one row are read as one region


@dataclass
class PipelineStats:
    """Per-stage seconds. ``read`` sums all reader threads (so it can exceed the wall time); the ``*_wait``
    figures are time a stage sat idle: ``read_wait`` = the engine waiting for reads, ``infer_wait`` = the
    stitcher waiting for the engine."""

    tiles: int = 0  # tiles run
    batches: int = 0  # backend calls
    read: float = 0.0  # seconds reading tiles, summed over reader threads
    read_wait: float = 0.0  # seconds the inference thread waited for a batch's reads
    inference: float = 0.0  # seconds inside backend.run
    stitch: float = 0.0  # seconds inside the stitcher
    infer_wait: float = 0.0  # seconds the stitching thread waited for results
    wall: float = 0.0  # wall-clock seconds of the whole pipeline

    def as_dict(self) -> dict[str, float]:
        return {
            "read": self.read,
            "read_wait": self.read_wait,
            "inference": self.inference,
            "stitch": self.stitch,
            "infer_wait": self.infer_wait,
            "pipeline": self.wall,
        }


class _Stop(Exception):
    """Raised inside a worker thread when another thread failed and the pipeline is shutting down."""


_DONE = object()  # end-of-stream marker


@dataclass
class _QueuedBatch:
    """A batch on its way to the engine: which buffer holds it, its tiles, and their pending reads."""

    buffer_id: int  # index into the pipeline's preallocated buffers
    tiles: list[TileRC]  # tile_rc of each slot, in order
    futures: list[Future[float]]  # one read task per run of neighbouring tiles (returns seconds spent)


class _Pipeline:
    """One run of the pipeline: ``_feed`` (feeder thread), ``_infer`` (inference thread) and ``_drain`` (the
    calling thread, stitching). Queues are bounded; ``stop`` ends every loop; the first failure wins."""

    def __init__(self, source: TileSource, grid: TileGrid, tiles: Sequence[TileRC], backend: Runner,
                 stitcher: TileSink, opts: PipelineOptions) -> None:
        self.source, self.grid, self.tiles = source, grid, tiles
        self.backend, self.stitcher, self.opts = backend, stitcher, opts
        self.stats = PipelineStats()
        t = grid.tile
        n_buffers = opts.prefetch + 2  # prefetch queued + one being inferred + one being filled
        self.buffers = [np.empty((opts.batch_size, t, t, 3), dtype=np.uint8) for _ in range(n_buffers)]
        self.free: queue.Queue[int] = queue.Queue()
        for i in range(n_buffers):
            self.free.put(i)
        self.ready: queue.Queue[Any] = queue.Queue(maxsize=opts.prefetch)
        self.results: queue.Queue[Any] = queue.Queue(maxsize=2)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.failures: list[BaseException] = []
        self.pool = ThreadPoolExecutor(max_workers=opts.workers, thread_name_prefix="slidefuse-read")

    # --- plumbing ----------------------------------------------------------------------------------
    def _put(self, q: queue.Queue[Any], item: Any) -> None:
        while True:
            if self.stop.is_set():
                raise _Stop
            try:
                q.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def _get(self, q: queue.Queue[Any]) -> Any:
        while True:
            if self.stop.is_set():
                raise _Stop
            try:
                return q.get(timeout=0.05)
            except queue.Empty:
                continue

    def _stop_with(self, exc: BaseException) -> None:
        with self.lock:
            self.failures.append(exc)
        self.stop.set()

    def _guarded(self, body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                body()
            except _Stop:
                pass
            except BaseException as exc:  # handed to the calling thread
                self._stop_with(exc)

        return run

    # --- stages ------------------------------------------------------------------------------------
    def _read_run(self, buf: np.ndarray, slots: list[int], run: list[TileRC]) -> float:
        if self.stop.is_set():
            return 0.0
        t0 = time.perf_counter()
        t = self.grid.tile
        boxes = [self.grid.tile_box(rc) for rc in run]
        if len(boxes) == 1:
            buf[slots[0]] = self.source.read(*boxes[0])
        else:
            x0, y0 = boxes[0][0], boxes[0][1]
            region = self.source.read(x0, y0, boxes[-1][0] + t - x0, t)
            for slot, (x, _, _, _) in zip(slots, boxes, strict=True):
                buf[slot] = region[:, x - x0 : x - x0 + t]
        return time.perf_counter() - t0

    def _feed(self) -> None:
        """Fill free buffers with reads (on the reader pool) and queue them, in tile order."""
        bs = self.opts.batch_size
        for start in range(0, len(self.tiles), bs):
            batch_tiles = list(self.tiles[start : start + bs])
            buffer_id = self._get(self.free)
            buf = self.buffers[buffer_id]
            futures = [self.pool.submit(self._read_run, buf, slots, run)
                       for slots, run in _runs(batch_tiles, self.opts.run_length)]
            self._put(self.ready, _QueuedBatch(buffer_id, batch_tiles, futures))
        self._put(self.ready, _DONE)

    def _infer(self) -> None:
        """Wait for each batch's reads, run the backend, free the buffer, queue the probabilities."""
        while True:
            item = self._get(self.ready)
            if item is _DONE:
                self._put(self.results, _DONE)
                return
            t0 = time.perf_counter()
            read_seconds = sum(f.result() for f in item.futures)
            t1 = time.perf_counter()
            probs = self.backend.run(self.buffers[item.buffer_id][: len(item.tiles)])
            t2 = time.perf_counter()
            self.free.put(item.buffer_id)
            with self.lock:
                self.stats.read += read_seconds
                self.stats.read_wait += t1 - t0
                self.stats.inference += t2 - t1
                self.stats.batches += 1
            self._put(self.results, (item.tiles, probs))

    def _drain(self, progress: ProgressFn | None) -> int:
        """Stitch results in order on the calling thread; returns the number of tiles stitched."""
        done, total = 0, len(self.tiles)
        while True:
            t0 = time.perf_counter()
            try:
                item = self._get(self.results)
            except _Stop:
                return done
            self.stats.infer_wait += time.perf_counter() - t0
            if item is _DONE:
                return done
            batch_tiles, probs = item
            if probs.shape[0] != len(batch_tiles):
                raise RuntimeError(f"backend returned {probs.shape[0]} results for {len(batch_tiles)} tiles")
            t1 = time.perf_counter()
            for i, rc in enumerate(batch_tiles):
                self.stitcher.add(rc, probs[i])
            self.stats.stitch += time.perf_counter() - t1
            done += len(batch_tiles)
            if progress is not None:
                progress(done, total)

    def run(self, progress: ProgressFn | None) -> PipelineStats:
        threads = [
            threading.Thread(target=self._guarded(self._feed), name="slidefuse-feed", daemon=True),
            threading.Thread(target=self._guarded(self._infer), name="slidefuse-infer", daemon=True),
        ]
        for th in threads:
            th.start()
        try:
            done = self._drain(progress)
        except BaseException as exc:
            self._stop_with(exc)
            raise
        finally:
            self.stop.set()
            self.pool.shutdown(wait=True, cancel_futures=True)
            for th in threads:
                th.join()
        if self.failures:
            raise self.failures[0]
        if done != len(self.tiles):  # cannot happen without a failure; never return a silently short result
            raise RuntimeError(f"pipeline stopped after {done} of {len(self.tiles)} tiles")
        self.stats.tiles = done
        return self.stats


def run_pipeline(
    source: TileSource,
    grid: TileGrid,
    tiles: Sequence[TileRC],
    backend: Runner,
    stitcher: TileSink,
    options: PipelineOptions | None = None,
    progress: ProgressFn | None = None,
) -> PipelineStats:
    """Read ``tiles`` (model-frame ``tile_rc`` of ``grid``, row-major order) from ``source``, run them through
    ``backend`` in batches and add each tile's result to ``stitcher`` (a `TileSink`: the `Stitcher`, or an
    embedding writer) in the same order. Does not call
    ``stitcher.finish()``. Re-raises the first exception of any thread. Returns per-stage timings."""
    opts = options or PipelineOptions()
    if opts.batch_size < 1 or opts.workers < 1 or opts.prefetch < 1:
        raise ValueError(f"batch_size, workers and prefetch must be >= 1, got {opts}")
    order = [r * grid.n_cols + c for r, c in tiles]
    if any(b <= a for a, b in zip(order, order[1:], strict=False)):
        raise ValueError("tiles must be in row-major order without repeats")
    t_start = time.perf_counter()
    if not tiles:
        return PipelineStats()
    stats = _Pipeline(source, grid, tiles, backend, stitcher, opts).run(progress)
    stats.wall = time.perf_counter() - t_start
    log.debug("pipeline: %d tiles in %d batches, %s", stats.tiles, stats.batches,
              ", ".join(f"{k} {v:.2f}s" for k, v in stats.as_dict().items()))
    return stats


def _runs(batch_tiles: list[TileRC], run_length: int) -> list[tuple[list[int], list[TileRC]]]:
    """Split a batch into runs of consecutive tiles of one row (at most ``run_length`` each):
    ``[(slots in the batch, tile_rcs)]``, read as one region per run."""
    out: list[tuple[list[int], list[TileRC]]] = []
    for slot, rc in enumerate(batch_tiles):
        if out:
            slots, run = out[-1]
            pr, pc = run[-1]
            if rc[0] == pr and rc[1] == pc + 1 and len(run) < run_length:
                slots.append(slot)
                run.append(rc)
                continue
        out.append(([slot], [rc]))
    return out
