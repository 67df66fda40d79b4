"""Engine benchmark: latency and throughput of one backend on one bundle over a batch sweep, set against the
device's peak arithmetic rate.

Timing: each sample is the wall-clock time (`time.perf_counter`) of one `backend.run(tiles)` call on the same
uint8 batch, host array in, host float32 array out. Because `run` returns host numpy, any GPU work has
finished when it returns: the samples are synchronised by construction (a CUDA device is additionally
synchronised when torch is loaded). Warm-up calls (which include lazy initialisation, autotuning and
compilation) are excluded. Tiles are seeded random RGB noise: the models are dense, so cost does not
depend on pixel values.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slidefuse.bench.flops import FlopCount, model_flops
from slidefuse.bench.machine import Peak, cpu_peak, gpu_name, gpu_peak, machine_info, peak_rss_mib, rss_mib
from slidefuse.errors import UsageError
from slidefuse.runtime.backends.base import COMPUTE_PRECISIONS, Backend, BackendInfo, DeviceKind
from slidefuse.runtime.bundle import Bundle

log = logging.getLogger(__name__)

TIMING_NOTE = ("wall-clock time of one backend.run call (host uint8 in, host float32 out); run returns host "
               "numpy, so GPU work is complete (synchronised) when it returns; warm-up calls excluded")


@dataclass(frozen=True)
class EngineBenchConfig:
    """What `bench_engine` measures."""

    batches: tuple[int, ...] = (1, 8, 32)  # batch sizes to sweep, in order
    iters: int = 20  # timed calls per batch size
    warmup: int = 3  # untimed calls per batch size before timing
    precision: str | None = None  # requested precision; None = the backend's default (fp32)
    backend_options: dict[str, Any] = field(default_factory=dict)  # extra open_backend options (threads, device)
    seed: int = 0  # seed of the random tiles

    def check(self) -> None:
        """Raise UsageError for out-of-range values."""
        if not self.batches or any(b < 1 for b in self.batches):
            raise UsageError(f"batches={','.join(map(str, self.batches))}: expected positive batch sizes, "
                             "e.g. 1,8,32", field="batches")
        if self.iters < 1:
            raise UsageError(f"iters={self.iters}: expected at least 1 timed call", field="iters")
        if self.warmup < 0:
            raise UsageError(f"warmup={self.warmup}: expected 0 or more warm-up calls", field="warmup")
        if self.precision is not None and self.precision not in COMPUTE_PRECISIONS:
            raise UsageError(f"precision={self.precision}: expected one of {', '.join(COMPUTE_PRECISIONS)}",
                             field="precision")

    def open_options(self) -> dict[str, Any]:
        return open_options(self.backend_options, self.precision)


def open_options(backend_options: dict[str, Any], precision: str | None) -> dict[str, Any]:
    """Options for open_backend: the extra backend options plus `precision` when one was requested."""
    return {**backend_options, **({"precision": precision} if precision is not None else {})}


def parse_batches(text: str) -> tuple[int, ...]:
    """'1,8,32' -> (1, 8, 32); raises UsageError naming the bad value."""
    try:
        out = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"batches={text!r}: expected comma-separated positive integers, e.g. 1,8,32",
                         field="batches") from None
    if not out or any(b < 1 for b in out):
        raise UsageError(f"batches={text!r}: expected comma-separated positive integers, e.g. 1,8,32",
                         field="batches")
    return out


def random_tiles(batch: int, tile: int, seed: int = 0) -> np.ndarray:
    """Seeded random RGB tiles: uint8 [batch, tile, tile, 3], values 0..255."""
    return np.random.default_rng(seed).integers(0, 256, size=(batch, tile, tile, 3), dtype=np.uint8)


def time_calls(fn: Callable[[], object], iters: int, warmup: int,
               sync: Callable[[], None] | None = None) -> list[float]:
    """Call `fn` `warmup` times untimed, then `iters` times; return the timed calls' seconds. `sync` (e.g.
    torch.cuda.synchronize) runs after every call, inside the timed span."""
    for _ in range(warmup):
        fn()
        if sync is not None:
            sync()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        out.append(time.perf_counter() - t0)
    return out


def latency_summary(seconds: Sequence[float], batch: int, tile: int) -> dict[str, Any]:
    """Latency percentiles (ms, linear interpolation) and throughput from per-call seconds.

    `tiles_per_s` is tiles over total timed seconds (= batch / mean latency); `megapixels_per_s` is that
    times tile x tile pixels. With fewer than 100 samples p99 is interpolated near the maximum."""
    if not seconds:
        raise UsageError("no timed calls to summarise; pass iters=1 or more", field="iters")
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    tiles_per_s = batch * len(ms) / (ms.sum() / 1e3)
    return {
        "batch": batch,
        "iters": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "ms_per_tile": float(ms.mean() / batch),
        "tiles_per_s": float(tiles_per_s),
        "megapixels_per_s": float(tiles_per_s * tile * tile / 1e6),
    }


def achieved(flop_count: FlopCount | None, tiles_per_s: float, peak: Peak) -> dict[str, Any]:
    """Achieved TFLOP/s (FLOPs per tile x tiles/s) and its fraction of `peak` (None where unknown)."""
    if flop_count is None:
        return {"achieved_tflops": None, "fraction_of_peak": None}
    tflops = flop_count.total * tiles_per_s / 1e12
    out: dict[str, Any] = {
        "achieved_tflops": tflops,
        "fraction_of_peak": tflops / peak.tflops if peak.tflops else None,
    }
    for name, value in (peak.alt_tflops or {}).items():
        out[f"fraction_of_{name}_peak"] = tflops / value
    return out


# ------------------------------------------------------------------------------------------- devices


def resolve_precision(info: BackendInfo, requested: str | None) -> str:
    """The precision a measurement is labelled with: what the backend reports running. One that does not say
    is taken to run fp32, its default; asking it for fp16/bf16 is refused rather than mislabelled."""
    reported = info.precision
    if reported is None:
        if requested not in (None, "fp32"):
            raise UsageError(f"precision={requested}: backend {info.backend} does not report running "
                             f"{requested} (it runs fp32); drop precision={requested} or pick a backend with "
                             f"{requested}", field="precision")
        return "fp32"
    if requested is not None and reported != requested:
        raise UsageError(f"precision={requested}: backend {info.backend} runs {reported}; "
                         f"choose a backend that supports {requested} or drop precision={requested}",
                         field="precision")
    return reported


def device_peak(info: BackendInfo, precision: str) -> Peak:
    """The peak for a measurement: datasheet GPU peak on CUDA (the GPU the backend names, else device 0),
    estimated CPU peak otherwise."""
    if info.device == "cuda":
        return gpu_peak(info.device_name or gpu_name() or "unknown GPU", precision)
    return cpu_peak()


def _cuda_torch(device: DeviceKind) -> Any:
    """The torch module when the benchmark runs on CUDA through a torch that is already loaded, else None."""
    torch = sys.modules.get("torch")
    if device == "cuda" and torch is not None and torch.cuda.is_available():
        return torch
    return None


def memory_snapshot(device: DeviceKind) -> dict[str, Any]:
    """Memory after a batch size's timed calls: torch.cuda.max_memory_allocated (MiB, since the last reset)
    when torch runs on CUDA; host RSS now and the process peak RSS in every case."""
    out: dict[str, Any] = {"host_rss_mib": rss_mib(), "host_peak_rss_mib": peak_rss_mib()}
    torch = _cuda_torch(device)
    if torch is not None:
        out["device_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["device_max_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
        out["device_memory_source"] = "torch.cuda.max_memory_allocated (PyTorch's caching allocator only)"
    else:
        out["device_memory_source"] = ("host RSS (no device memory counter for this backend)" if device == "cuda"
                                       else "host RSS (CPU backend)")
    return out


# ------------------------------------------------------------------------------------------- the benchmark


def model_info(bundle: Bundle) -> dict[str, Any]:
    """What model a benchmark ran: bundle path and digest, encoder, tile, classes."""
    m = bundle.manifest
    return {"bundle": str(bundle.path), "digest": bundle.digest, "encoder": m.encoder, "patch_size": m.patch_size,
            "tile_size": m.tile_size, "num_classes": m.num_classes, "classes": m.class_names,
            "decoder_width": m.decoder_width, "mpp": m.mpp, "random_weights": m.random_weights}


def flops_info(bundle: Bundle) -> tuple[FlopCount | None, dict[str, Any]]:
    """FLOPs per tile of the bundle's model and its JSON form ({'available': False, 'reason'} when none)."""
    count, reason = model_flops(bundle.manifest, bundle.model_path)
    if count is None:
        return None, {"available": False, "reason": reason}
    return count, {"available": True, **count.to_dict()}


def bench_batches(backend: Backend, batches: Sequence[int], tile: int, iters: int, warmup: int, seed: int,
                  device: DeviceKind) -> list[dict[str, Any]]:
    """Latency/throughput/memory rows for an open backend, one per batch size."""
    torch = _cuda_torch(device)
    sync = torch.cuda.synchronize if torch is not None else None
    rows = []
    for batch in batches:
        tiles = random_tiles(batch, tile, seed)
        if torch is not None:
            torch.cuda.reset_peak_memory_stats()
        seconds = time_calls(functools.partial(backend.run, tiles), iters, warmup, sync)
        row = latency_summary(seconds, batch, tile)
        row["memory"] = memory_snapshot(device)
        row["load_average"] = machine_info()["load_average"]
        log.info("batch %d: p50 %.1f ms, %.2f tiles/s", batch, row["p50_ms"], row["tiles_per_s"])
        rows.append(row)
    return rows


def needs_per_batch_setup(backend_name: str) -> bool:
    """Whether backend `backend_name` is built for one batch size (`auto` picks none of those)."""
    from slidefuse.runtime.backends.registry import AUTO, get_backend

    return backend_name != AUTO and get_backend(backend_name).needs_per_batch_setup


def bench_engine(bundle: Bundle, backend_name: str, config: EngineBenchConfig) -> dict[str, Any]:
    """Run the batch sweep of `config` on `backend_name` and return the benchmark's JSON document:
    machine, model, backend, flops, peak, settings and one result row per batch size."""
    from slidefuse.runtime.backends import open_backend

    config.check()
    machine_before = machine_info()
    tile = bundle.manifest.tile_size
    options = config.open_options()
    # A backend built for one batch size (torch-compile pads smaller batches and splits larger ones) is
    # opened once per batch size with that size, unless the user fixed it; its load time is then excluded too.
    per_batch = needs_per_batch_setup(backend_name) and "batch" not in options
    groups = [(b,) for b in config.batches] if per_batch else [tuple(config.batches)]
    rows: list[dict[str, Any]] = []
    for group in groups:
        opts = {**options, "batch": group[0]} if per_batch else options
        with open_backend(backend_name, bundle, **opts) as backend:
            info = backend.info()
            precision = resolve_precision(info, config.precision)
            group_rows = bench_batches(backend, group, tile, config.iters, config.warmup, config.seed, info.device)
            if per_batch:  # each row ran on its own backend instance: keep what that one reported
                for row in group_rows:
                    row["backend_info"] = info.to_dict()
            rows += group_rows
    # Counted after the timing, so torch (imported by the counter) is not in the CPU backends' RSS figures.
    flop_count, flops = flops_info(bundle)
    peak = device_peak(info, precision)
    for row in rows:
        row.update(achieved(flop_count, row["tiles_per_s"], peak))
    return {
        "kind": "engine",
        "machine": machine_before,
        "load_average_after": machine_info()["load_average"],
        "model": model_info(bundle),
        "backend": {"name": backend_name, "device": info.device, "precision": precision,
                    "options": {k: str(v) for k, v in config.open_options().items()}, "info": info.to_dict()},
        "flops": flops,
        "peak": peak.to_dict(),
        "settings": {"iters": config.iters, "warmup": config.warmup, "batches": list(config.batches),
                     "seed": config.seed, "timing": TIMING_NOTE,
                     "backend_per_batch": per_batch},
        "results": rows,
    }


# ------------------------------------------------------------------------------------------- comparisons


@dataclass(frozen=True)
class Contender:
    """One backend in an interleaved comparison."""

    backend: str  # registry name
    options: dict[str, Any] = field(default_factory=dict)  # open_backend options
    label: str = ""  # name in the results (default: the backend name)

    @property
    def key(self) -> str:
        return self.label or self.backend


def compare_backends(bundle: Bundle, contenders: Sequence[Contender], batch: int, *, rounds: int = 3,
                     iters_per_round: int = 1, warmup: int = 1, warmup_batch: int | None = None,
                     seed: int = 0) -> dict[str, Any]:
    """Throughput of several backends on the same model, tiles and batch, measured in one run and interleaved
    (round r times every contender in turn), so that changes in machine load hit all of them alike.

    Warm-up calls use `warmup_batch` tiles (default `batch`; a smaller one saves time with slow models).
    Returns per-contender latency summaries over all rounds and `throughput_ratio_<a>_to_<b>` for each pair
    (a's tiles/s over b's, > 1 when a is faster)."""
    from contextlib import ExitStack

    from slidefuse.runtime.backends import open_backend

    if len(contenders) < 2:
        raise UsageError(f"{len(contenders)} backend(s) to compare: expected at least 2")
    if rounds < 1 or iters_per_round < 1:
        raise UsageError(f"rounds {rounds}, iters per round {iters_per_round}: expected at least 1 each")
    tile = bundle.manifest.tile_size
    tiles = random_tiles(batch, tile, seed)
    warm_tiles = tiles if warmup_batch in (None, batch) else random_tiles(int(warmup_batch or 1), tile, seed)
    samples: dict[str, list[float]] = {c.key: [] for c in contenders}
    infos: dict[str, BackendInfo] = {}
    loads = []
    with ExitStack() as stack:
        opened = []
        for c in contenders:
            b = stack.enter_context(open_backend(c.backend, bundle, **c.options))
            infos[c.key] = b.info()
            time_calls(functools.partial(b.run, warm_tiles), 0, warmup)  # warm-up only
            opened.append((c, b))
        for r in range(rounds):
            for c, b in opened:
                samples[c.key] += time_calls(functools.partial(b.run, tiles), iters_per_round, 0)
            loads.append(machine_info()["load_average"])
            log.info("round %d/%d: %s", r + 1, rounds,
                     ", ".join(f"{k} {np.mean(v[-iters_per_round:]) * 1e3:.0f} ms" for k, v in samples.items()))
    results = {k: latency_summary(v, batch, tile) | {"samples_ms": [s * 1e3 for s in v]} for k, v in samples.items()}
    flop_count, flops = flops_info(bundle)
    peaks = {}
    for k, row in results.items():
        info = infos[k]
        peak = device_peak(info, info.precision or "fp32")
        row.update(achieved(flop_count, row["tiles_per_s"], peak))
        peaks[k] = peak.to_dict()
    ratios = {}
    keys = [c.key for c in contenders]
    for i, a in enumerate(keys):
        for b_key in keys[i + 1:]:
            ratios[f"throughput_ratio_{_slug(a)}_to_{_slug(b_key)}"] = (
                results[a]["tiles_per_s"] / results[b_key]["tiles_per_s"])
    return {"kind": "comparison", "model": model_info(bundle), "flops": flops, "peaks": peaks,
            "batch": batch, "rounds": rounds, "iters_per_round": iters_per_round, "warmup": warmup,
            "warmup_batch": warmup_batch or batch,
            "order": "interleaved: each round times every backend in turn",
            "backends": {k: v.to_dict() for k, v in infos.items()},
            "results": results, "ratios": ratios, "load_average_per_round": loads}


def _slug(name: str) -> str:
    return name.replace("-", "_").replace(" ", "_")
