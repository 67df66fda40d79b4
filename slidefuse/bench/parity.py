"""Parity between backends (after Polygraphy's "run N runners on the same input and compare"): every backend runs
the same uint8 tiles and its float32 probabilities `[N, C, T, T]` are compared with a reference backend's
(`torch`, fp32, by default):

- `max_abs_diff`: largest |p_ref - p| over every tile, class and pixel (probabilities, 0..1);
- `mean_abs_diff`: the mean of the same;
- `argmax_agreement`: fraction of pixels whose argmax class is the same as the reference's.

A row passes with max |dp| <= 1e-3 and agreement >= 0.999 for a backend that computes in fp32, and with the fp16
thresholds of the export's parity gate (5e-2 / 0.99) for one that reports fp16/bf16/fp8/int8.

Tiles: tissue tiles from the real slides in `../shared/data/slides` when present (half of them) plus seeded
random tiles, as in the export's parity gate. Timing per backend: `load_s` (the `with` block's start-up:
session/engine creation, compilation and warm-up), then one untimed batch, then `run_s` for all tiles in batches
of `batch`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slidefuse.errors import SlidefuseError, UsageError
from slidefuse.export.parity import FP16_THRESHOLDS, FP32_THRESHOLDS, ParityThresholds, ParityTiles, compare
from slidefuse.runtime.backends.base import Backend
from slidefuse.runtime.bundle import Bundle

log = logging.getLogger(__name__)

REFERENCE = "torch"
REDUCED = ("fp16", "bf16", "fp8", "int8")  # precisions judged with the fp16 thresholds


@dataclass(frozen=True)
class ParityRow:
    """One backend's figures against the reference (one row of the table, one dict of the JSON)."""

    backend: str  # registry name
    status: str  # "reference", "pass", "fail" (thresholds missed), "unavailable" or "error"
    max_abs_diff: float | None = None  # largest |p_ref - p| (0..1); None when the backend did not run
    mean_abs_diff: float | None = None  # mean |p_ref - p|
    argmax_agreement: float | None = None  # fraction of pixels with the reference's argmax class (0..1)
    tiles: int = 0  # tiles compared
    reference: str = REFERENCE  # the backend compared against
    precision: str | None = None  # what the backend reports it computes in
    load_s: float | None = None  # seconds to open the backend (sessions, engines, compilation, warm-up)
    run_s: float | None = None  # seconds to run all tiles after one untimed batch
    tiles_per_s: float | None = None  # tiles / run_s
    thresholds: dict[str, float] = field(default_factory=dict)  # max_abs_diff / min_argmax_agreement used
    reason: str = ""  # why a backend did not run, or the failure
    info: dict[str, Any] = field(default_factory=dict)  # backend.info(): providers, device, engine...

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parity_inputs(tile_size: int, n_tiles: int, seed: int = 0, slides_dir: Path | None = None) -> ParityTiles:
    """`n_tiles` uint8 tiles `[n_tiles, T, T, 3]`: up to half real tissue tiles, the rest seeded random ones."""
    from slidefuse.export.parity import parity_tiles

    if n_tiles < 1:
        raise UsageError(f"--tiles {n_tiles}: expected at least 1 tile")
    n_real = (n_tiles + 1) // 2
    tiles = parity_tiles(tile_size, n_real, n_tiles - n_real, seed, slides_dir)
    short = n_tiles - len(tiles.tiles)
    if short > 0:  # fewer real tiles than asked (no slides here): top up with random ones
        extra = parity_tiles(tile_size, 0, short, seed + 1)
        tiles = ParityTiles(np.concatenate([tiles.tiles, extra.tiles]), tiles.sources + extra.sources)
    return ParityTiles(tiles.tiles[:n_tiles], tiles.sources[:n_tiles])


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, SlidefuseError) else f"{type(exc).__name__}: {text}"


def _run_all(backend: Backend, tiles: np.ndarray, batch: int) -> tuple[np.ndarray, float]:
    """One untimed batch, then every tile in batches of `batch`; returns (float32 [N, C, T, T], seconds)."""
    backend.run(tiles[:batch])
    t0 = time.perf_counter()
    outs = [backend.run(tiles[i:i + batch]) for i in range(0, len(tiles), batch)]
    return np.concatenate(outs), time.perf_counter() - t0


def _measure(name: str, bundle: Bundle, tiles: np.ndarray, batch: int, options: Mapping[str, Any]
             ) -> tuple[np.ndarray, dict[str, Any]]:
    """Open backend `name`, run every tile, close it. Returns (probabilities, timings + info)."""
    from slidefuse.runtime.backends import open_backend

    backend = open_backend(name, bundle, **dict(options))
    t0 = time.perf_counter()
    with backend:
        load_s = time.perf_counter() - t0
        out, run_s = _run_all(backend, tiles, batch)
        info = backend.info()
    return out, {"load_s": load_s, "run_s": run_s, "info": info}


def _thresholds_for(precision: str | None) -> ParityThresholds:
    return FP16_THRESHOLDS if precision in REDUCED else FP32_THRESHOLDS


def check_names(backends: Sequence[str]) -> None:
    """Raise UnknownName / BackendUnavailable (listing the available ones) for a name that cannot run here."""
    from slidefuse.errors import BackendUnavailable
    from slidefuse.runtime.backends.registry import availability, available_backends, get_backend

    for name in backends:
        get_backend(name)
        reason = availability(name)
        if reason is not None:
            avail = [n for n, r in available_backends().items() if r is None]
            raise BackendUnavailable(f"backend '{name}' is not available here: {reason}; available backends: "
                                     f"{', '.join(avail) or 'none'}")


def run_parity(
    bundle: Bundle,
    backends: Sequence[str] | None = None,
    *,
    reference: str = REFERENCE,
    n_tiles: int = 8,
    batch: int = 4,
    seed: int = 0,
    slides_dir: Path | None = None,
    options: Mapping[str, Any] | None = None,
    reference_options: Mapping[str, Any] | None = None,
) -> list[ParityRow]:
    """Run `reference` and each of `backends` (default: every registered one that is available here) on the
    same tiles and compare. Named backends that cannot run here raise BackendUnavailable before anything runs;
    unnamed unavailable ones get an "unavailable" row. A backend that fails while running gets an "error" row
    (its one-line error) and the others go on. `options` go to every backend but the reference
    (e.g. precision), `reference_options` to the reference (default: fp32 on torch's default device).
    """
    from slidefuse.runtime.backends.registry import available_backends, backend_names

    if batch < 1:
        raise UsageError(f"--batch {batch}: expected a positive batch size")
    named = backends is not None
    names = list(dict.fromkeys(backends)) if backends is not None else backend_names()
    check_names([reference, *names] if named else [reference])
    avail = available_backends()
    tiles = parity_inputs(bundle.manifest.tile_size, n_tiles, seed, slides_dir)
    n = len(tiles.tiles)
    log.info("parity: %d tiles (%s), reference %s, backends %s", n, ", ".join(tiles.sources), reference,
             ", ".join(names))

    ref_out, ref_meta = _measure(reference, bundle, tiles.tiles, batch, reference_options or {})
    ref_prec = ref_meta["info"].get("precision")
    rows = [ParityRow(reference, "reference", 0.0, 0.0, 1.0, n, reference, ref_prec, ref_meta["load_s"],
                      ref_meta["run_s"], n / ref_meta["run_s"], info=ref_meta["info"])]
    for name in names:
        if name == reference and not options:
            continue
        if avail.get(name) is not None:
            rows.append(ParityRow(name, "unavailable", tiles=0, reference=reference, reason=str(avail[name])))
            continue
        try:
            out, meta = _measure(name, bundle, tiles.tiles, batch, options or {})
        except Exception as exc:  # recorded in the row (one line); the other backends still run
            log.debug("parity: %s failed", name, exc_info=True)
            rows.append(ParityRow(name, "error", tiles=0, reference=reference, reason=_one_line(exc)))
            continue
        prec = meta["info"].get("precision")
        th = _thresholds_for(prec if isinstance(prec, str) else None)
        fig = compare(ref_out, out)
        ok = fig["max_abs_diff"] <= th.max_abs_diff and fig["argmax_agreement"] >= th.min_argmax_agreement
        rows.append(ParityRow(
            name, "pass" if ok else "fail", fig["max_abs_diff"], fig["mean_abs_diff"], fig["argmax_agreement"],
            n, reference, prec, meta["load_s"], meta["run_s"], n / meta["run_s"],
            thresholds=dataclasses.asdict(th), info=meta["info"],
        ))
        log.info("parity: %s vs %s: max|dp| %.3g, argmax agreement %.5f (%s)", name, reference,
                 fig["max_abs_diff"], fig["argmax_agreement"], "pass" if ok else "FAIL")
    return rows


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_table(rows: Sequence[ParityRow]) -> str:
    """The rows as a fixed-width text table (one line per backend)."""
    head = f"{'backend':<14} {'status':<11} {'precision':<9} {'max|dp|':>9} {'argmax':>9} {'load s':>8} " \
           f"{'tiles/s':>9}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        note = r.reason or ", ".join(f"{k} {v}" for k, v in r.info.items()
                                     if k in ("device", "providers", "engine", "graph"))
        lines.append(f"{r.backend:<14} {r.status:<11} {r.precision or '-':<9} {_fmt(r.max_abs_diff, '.3g'):>9} "
                     f"{_fmt(r.argmax_agreement, '.5f'):>9} {_fmt(r.load_s, '.2f'):>8} "
                     f"{_fmt(r.tiles_per_s, '.2f'):>9}  {note}")
    return "\n".join(lines)
