"""Slide benchmark: one slide (or several, as one batch) end to end through the real runtime (`segment_many`,
as `slidefuse segment` runs it), with time per stage, then the engine alone on the very same tiles, and the
ratio of the two rates.

How "the same tiles" is guaranteed: the backend handed to `segment_many` is wrapped in a recorder that
copies every batch it is given (up to `max_engine_tiles` tiles) before running it. The engine-only pass then
replays those batches, with the same composition and the same backend instance, from memory. The copy (a
memcpy of the batch) is inside the end-to-end time; it is small next to a model's inference.

Stages and what they contain (from the runtime's own timings, `SlideResult.timings`):
- `tissue`: thumbnail read and tissue detection.
- `preload`: a small slide (at most 16 Mpx at the model's pixel size) decoded once, before the pipeline.
- `read_decode_resample`: reading tiles. libvips decodes (JPEG/JPEG 2000) and resamples to the model's pixel
  size in one lazy pipeline per region, so read, decode and resample are one merged stage here. It is summed
  over the reader threads and overlaps inference, so it can exceed the wall time.
- `inference`: time inside `backend.run`.
- `stitch`: blending probabilities into the output canvas, argmax, and `finish`.
- `write`: mask.tif, mask.geojson, report.json, preview.png.
- `read_wait` / `infer_wait`: time the engine waited for reads / the stitcher waited for the engine.
- `pipeline`: wall time of the streaming read -> infer -> stitch pipeline; `total_s`: the whole slide.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from slidefuse.bench.engine import (
    achieved,
    device_peak,
    flops_info,
    latency_summary,
    model_info,
    open_options,
    random_tiles,
    resolve_precision,
)
from slidefuse.bench.machine import machine_info, peak_rss_mib
from slidefuse.errors import UsageError
from slidefuse.numbers import is_number
from slidefuse.runtime.bundle import Bundle
from slidefuse.runtime.qc.policy import check_mode

log = logging.getLogger(__name__)

STAGE_NOTES = {
    "tissue": "thumbnail read + tissue detection",
    "qc": "quality control after tissue detection (ink, folds and blur maps, stain check; see --qc)",
    "preload": "small slides (<= 16 Mpx at the model's mpp): the whole view decoded once, before the pipeline",
    "read_decode_resample": "merged: libvips reads, decodes and resamples each region in one lazy pipeline; "
                            "summed over reader threads (overlaps inference)",
    "inference": "inside backend.run",
    "stitch": "blend into the canvas + argmax + finish",
    "write": "mask.tif, mask.geojson, report.json, preview.png",
}


@dataclass(frozen=True)
class SlideBenchConfig:
    """What `bench_slide` measures."""

    batch_size: int = 8  # tiles per backend call, in both the end-to-end and the engine-only runs
    mpp: float | None = None  # slide pixel size override (um/px) for slides without one
    workers: int = 4  # reader threads of the pipeline
    precision: str | None = None  # requested backend precision; None = its default
    backend_options: dict[str, Any] = field(default_factory=dict)  # extra open_backend options
    warmup: int = 2  # untimed backend calls on random tiles before anything is timed
    repeats: int = 1  # end-to-end + engine-only pairs, alternated; figures are medians over repeats
    max_engine_tiles: int = 2048  # tiles kept in memory for the engine-only replay (the first ones)
    all_tiles: bool = False  # run every grid tile, not only those touching tissue
    out_dir: Path | None = None  # keep the outputs here (default: a temporary folder, removed)
    overlap_slides: bool = True  # with several slides: plan ahead / write behind on a background thread
    qc: str = "default"  # quality control, as segment's --qc (off, flag, default, exclude)

    def check(self) -> None:
        """Raise UsageError for out-of-range values."""
        for name, value, low in (("batch_size", self.batch_size, 1), ("workers", self.workers, 1),
                                 ("warmup", self.warmup, 0), ("repeats", self.repeats, 1),
                                 ("max_engine_tiles", self.max_engine_tiles, 1)):
            if value < low:
                raise UsageError(f"{name}={value}: expected at least {low}", field=name)
        if self.mpp is not None and not (is_number(self.mpp) and math.isfinite(self.mpp) and self.mpp > 0):
            raise UsageError(f"mpp={self.mpp}: expected a positive pixel size in um/px, e.g. 0.5", field="mpp")
        check_mode(self.qc)

    def open_options(self) -> dict[str, Any]:
        return open_options(self.backend_options, self.precision)


class RecordingBackend:
    """Wraps an open backend: `run` copies each batch (uint8 [B, T, T, 3]) while fewer than `limit` tiles are
    kept, then forwards it. Everything else (`info`, `name`, ...) is the wrapped backend's."""

    def __init__(self, backend: Any, limit: int) -> None:
        self._backend = backend
        self.limit = limit
        self.batches: list[np.ndarray] = []  # recorded batches, in call order
        self.kept = 0  # tiles recorded
        self.seen = 0  # tiles run

    def run(self, tiles: np.ndarray) -> np.ndarray:
        if self.kept + len(tiles) <= self.limit:
            self.batches.append(np.array(tiles, copy=True))
            self.kept += len(tiles)
        self.seen += len(tiles)
        return cast(np.ndarray, self._backend.run(tiles))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


def engine_replay(backend: Any, batches: list[np.ndarray]) -> tuple[float, list[float]]:
    """Run `batches` through `backend` in order; return (total seconds, seconds per call)."""
    per_call = []
    for b in batches:
        t0 = time.perf_counter()
        backend.run(b)
        per_call.append(time.perf_counter() - t0)
    return float(sum(per_call)), per_call


def stage_times(timings: dict[str, float], total_s: float) -> dict[str, float]:
    """The runtime's timings under the stage names of this benchmark (see the module docstring)."""
    out = {
        "tissue": timings.get("tissue", 0.0),
        "qc": timings.get("qc", 0.0),
        "preload": timings.get("preload", 0.0),
        "read_decode_resample": timings.get("read", 0.0),
        "inference": timings.get("inference", 0.0),
        "stitch": timings.get("stitch", 0.0),
        "write": timings.get("write", 0.0),
        "read_wait": timings.get("read_wait", 0.0),
        "infer_wait": timings.get("infer_wait", 0.0),
        "pipeline": timings.get("pipeline", 0.0),
    }
    out["other"] = max(total_s - out["tissue"] - out["qc"] - out["preload"] - out["pipeline"] - out["write"], 0.0)
    out["total"] = total_s
    return out


def _one_run(slides: list[Path], bundle: Bundle, backend: Any, config: SlideBenchConfig, backend_name: str,
             out_root: Path) -> tuple[list[Any], RecordingBackend, float]:
    """One end-to-end segmentation of `slides` (one batch, as `slidefuse segment` runs it) with a recording
    wrapper around `backend`; (SlideResults, recorder, wall seconds). A failed slide fails the benchmark."""
    from slidefuse.errors import SlidefuseError
    from slidefuse.runtime.segment import SegmentOptions, segment_many

    options = SegmentOptions(backend=backend_name, backend_options=config.open_options(),
                             batch_size=config.batch_size, mpp=config.mpp, workers=config.workers,
                             all_tiles=config.all_tiles, overwrite=True, overlap_slides=config.overlap_slides,
                             qc=config.qc)
    recorder = RecordingBackend(backend, config.max_engine_tiles)
    t0 = time.perf_counter()
    results = segment_many(slides, bundle, out_root, options, backend=cast(Any, recorder))
    wall_s = time.perf_counter() - t0
    failed = [r for r in results if r.status != "ok"]
    if failed:
        raise SlidefuseError(f"the benchmark needs every slide segmented; {failed[0].error or failed[0].status}")
    return results, recorder, wall_s


def bench_slide(slide: Path | Sequence[Path], bundle: Bundle, backend_name: str,
                config: SlideBenchConfig) -> dict[str, Any]:
    """Segment `slide` (one slide, or several as one batch) end to end `config.repeats` times, each followed
    by the engine alone on the same tiles; return the benchmark's JSON document (stages summed over the
    slides, tiles/s, engine-only tiles/s, their ratios, machine)."""
    from slidefuse.errors import SlideNotFound
    from slidefuse.runtime.backends import open_backend

    config.check()
    slides = [Path(slide)] if isinstance(slide, (str, Path)) else [Path(p) for p in slide]
    if not slides:
        raise UsageError("no slide given; pass at least one slide file")
    for p in slides:
        if not p.is_file():
            raise SlideNotFound(f"{p}: no such slide file; check the path")
    machine_before = machine_info()
    tile = bundle.manifest.tile_size
    runs: list[dict[str, Any]] = []
    with open_backend(backend_name, bundle, **config.open_options()) as backend, \
            tempfile.TemporaryDirectory(prefix="slidefuse-bench-") as tmp:
        info = backend.info()
        precision = resolve_precision(info, config.precision)
        for _ in range(config.warmup):
            backend.run(random_tiles(config.batch_size, tile))
        out_root = Path(config.out_dir) if config.out_dir is not None else Path(tmp)
        for i in range(config.repeats):
            result, recorder, wall_s = _one_run(slides, bundle, backend, config, backend_name, out_root / f"run{i}")
            engine_s, per_call = engine_replay(backend, recorder.batches)
            runs.append(_run_figures(result, recorder, wall_s, engine_s, per_call, config.batch_size, tile))
            log.info("run %d/%d: end to end %.2f tiles/s, engine only %.2f tiles/s (ratio %s)", i + 1,
                     config.repeats, runs[-1]["end_to_end_tiles_per_s"], runs[-1]["engine_tiles_per_s"],
                     runs[-1]["end_to_end_to_engine_ratio"])
        rss = peak_rss_mib()
    flop_count, flops = flops_info(bundle)
    peak = device_peak(info, precision)
    summary = _summarise(runs)
    summary.update({f"engine_{k}": v for k, v in
                    achieved(flop_count, summary["engine_tiles_per_s"], peak).items()})
    summary.update({f"end_to_end_{k}": v for k, v in
                    achieved(flop_count, summary["end_to_end_tiles_per_s"], peak).items()})
    return {
        "kind": "slide",
        "slide": str(slides[0]) if len(slides) == 1 else ", ".join(p.name for p in slides),
        "slides": [str(p) for p in slides],
        "machine": machine_before,
        "load_average_after": machine_info()["load_average"],
        "model": model_info(bundle),
        "backend": {"name": backend_name, "device": info.device, "precision": precision,
                    "options": {k: str(v) for k, v in config.open_options().items()}, "info": info.to_dict()},
        "flops": flops,
        "peak": peak.to_dict(),
        "settings": {"batch_size": config.batch_size, "workers": config.workers, "mpp": config.mpp,
                     "warmup": config.warmup, "repeats": config.repeats, "all_tiles": config.all_tiles,
                     "max_engine_tiles": config.max_engine_tiles, "overlap_slides": config.overlap_slides,
                     "qc": config.qc},
        "stage_notes": STAGE_NOTES,
        "host_peak_rss_mib": rss,
        "summary": summary,
        "runs": runs,
    }


def _run_figures(results: list[Any], recorder: RecordingBackend, wall_s: float, engine_s: float,
                 per_call: list[float], batch: int, tile: int) -> dict[str, Any]:
    """Figures of one end-to-end run (one or more slides) and its engine-only replay. Stage seconds are summed
    over the slides; with several overlapped slides, planning and outputs of all but the first and last
    slide run during inference, so the stages can add up to more than the wall time."""
    n = sum(int(r.tile_counts.get("run", 0)) for r in results) or recorder.seen
    total_s = float(wall_s if len(results) > 1 else (results[0].seconds or wall_s))
    timings: dict[str, float] = {}
    tiles: dict[str, int] = {}
    for r in results:
        for k, v in r.timings.items():
            timings[k] = timings.get(k, 0.0) + float(v)
        for k, c in r.tile_counts.items():
            tiles[k] = tiles.get(k, 0) + int(c)
    stages = stage_times(timings, total_s)
    e2e = n / total_s if total_s > 0 else 0.0
    pipe = n / stages["pipeline"] if stages["pipeline"] > 0 else 0.0
    engine = recorder.kept / engine_s if engine_s > 0 else 0.0
    return {
        "slides": len(results),
        "tiles": tiles,
        "tiles_run": n,
        "engine_tiles": recorder.kept,
        "engine_subset": recorder.kept < n,
        "stages_s": stages,
        "end_to_end_tiles_per_s": e2e,
        "end_to_end_megapixels_per_s": e2e * tile * tile / 1e6,
        "pipeline_tiles_per_s": pipe,
        "engine_tiles_per_s": engine,
        "engine_latency": latency_summary(per_call, batch, tile) if per_call else None,
        "end_to_end_to_engine_ratio": e2e / engine if engine else None,
        "pipeline_to_engine_ratio": pipe / engine if engine else None,
        "load_average": machine_info()["load_average"],
    }


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats of the headline figures, plus the stages of the median end-to-end run."""
    keys = ("end_to_end_tiles_per_s", "end_to_end_megapixels_per_s", "pipeline_tiles_per_s",
            "engine_tiles_per_s", "end_to_end_to_engine_ratio", "pipeline_to_engine_ratio")
    out: dict[str, Any] = {}
    for k in keys:
        values = [r[k] for r in runs if r[k] is not None]
        out[k] = float(np.median(values)) if values else None
    order = sorted(range(len(runs)), key=lambda i: runs[i]["end_to_end_tiles_per_s"])
    median_run = runs[order[len(order) // 2]]
    out["tiles_run"] = median_run["tiles_run"]
    out["stages_s"] = median_run["stages_s"]
    out["megapixels_per_s"] = out["end_to_end_megapixels_per_s"]
    out["tiles_per_s"] = out["end_to_end_tiles_per_s"]
    return out
