"""Parity between backends (after Polygraphy's "run N runners on the same input and compare"): every backend
runs the same uint8 tiles through `slidefuse.export.parity.compare`, and its float32 probabilities
`[N, C, T, T]` are compared with a reference backend's (`torch`, fp32, by default):

- `max_abs_diff`: largest |p_ref - p| over every tile, class and pixel (probabilities, 0..1);
- `mean_abs_diff`: the mean of the same;
- `argmax_agreement`: fraction of pixels whose argmax class is the same as the reference's.

A row passes with max |dp| <= 1e-3 and agreement >= 0.999 for a backend that computes in fp32, and with the
fp16 thresholds of the export's parity gate (5e-2 / 0.99) for one that reports fp16/bf16/fp8/int8.

Tiles (`slidefuse.export.parity.parity_tiles`): tissue tiles at the bundle's pixel size from the slides the
caller names, else the real tiles shipped with the package, plus random tiles only when asked for; every row
records the tile source. Timing per backend: `load_s` (the `with` block's start-up: session/engine creation,
compilation and warm-up), then one untimed batch, then `run_s` for all tiles in batches of `batch`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slidefuse.errors import UsageError, one_line
from slidefuse.export.parity import (
    FP16_THRESHOLDS,
    FP32_THRESHOLDS,
    ParityReport,
    ParityThresholds,
    ParityTiles,
    RunnerRecord,
    compare,
    package_tile_index,
    parity_tiles,
)
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
    tile_origin: str = ""  # where the tiles came from: "slides", "package-data", "random" or a '+' join
    reason: str = ""  # why a backend did not run, or the failure
    info: dict[str, Any] = field(default_factory=dict)  # the backend's info(): providers, device, engine...

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parity_inputs(tile_size: int, n_tiles: int, seed: int = 0, mpp: float | None = None,
                  slides: Sequence[Path] = ()) -> ParityTiles:
    """`n_tiles` uint8 tiles `[n_tiles, T, T, 3]` at `mpp` um/px (default: the shipped tiles' own): half of
    them (rounded up, at most the number shipped when no slides are named) real tissue tiles, the rest seeded
    random ones. For tests and benchmarks that want both kinds in one call."""
    if n_tiles < 1:
        raise UsageError(f"n_tiles {n_tiles}: expected at least 1 tile", field="n_tiles")
    n_real = (n_tiles + 1) // 2
    if not slides:
        n_real = min(n_real, len(package_tile_index()))
    tile_mpp = mpp if mpp is not None else float(package_tile_index()[0]["mpp"])
    return parity_tiles(tile_size, tile_mpp, n_real=n_real, n_random=n_tiles - n_real, seed=seed,
                        slides=slides)


def _thresholds_for(record: RunnerRecord) -> ParityThresholds:
    return FP16_THRESHOLDS if record.precision in REDUCED else FP32_THRESHOLDS


def check_names(backends: Sequence[str]) -> None:
    """Raise UnknownName / BackendUnavailable (listing the available ones) for a name that cannot run here."""
    from slidefuse.runtime.backends.registry import require_available

    for name in backends:
        require_available(name)


def _reference_row(report: ParityReport, reference: str) -> ParityRow:
    rec = report.runners[0]
    run_s = rec.run_s or 0.0
    return ParityRow(reference, "reference", 0.0, 0.0, 1.0, report.tiles, reference, rec.precision,
                     rec.load_s, rec.run_s, report.tiles / run_s if run_s else None,
                     tile_origin=report.tile_origin, info=rec.info)


def _candidate_row(report: ParityReport, name: str, reference: str) -> ParityRow:
    pair, rec = report.pairs[0], report.runners[1]
    run_s = rec.run_s or 0.0
    return ParityRow(
        name, "pass" if pair.passed else "fail", pair.max_abs_diff, pair.mean_abs_diff, pair.argmax_agreement,
        report.tiles, reference, rec.precision, rec.load_s, rec.run_s,
        report.tiles / run_s if run_s else None,
        thresholds=pair.thresholds.to_dict(), tile_origin=report.tile_origin, info=rec.info,
    )


def run_parity(
    bundle: Bundle,
    backends: Sequence[str] | None = None,
    *,
    reference: str = REFERENCE,
    n_tiles: int = 4,
    n_random: int = 0,
    slides: Sequence[Path] = (),
    batch: int = 4,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
    reference_options: Mapping[str, Any] | None = None,
) -> list[ParityRow]:
    """Run `reference` and each of `backends` (default: every registered one that is available here) on the
    same tiles and compare. Tiles: `n_tiles` real tissue tiles at the bundle's pixel size (from `slides` when
    given, else the shipped package tiles) plus `n_random` seeded random tiles. Named backends that cannot run
    here raise BackendUnavailable before anything runs; unnamed unavailable ones get an "unavailable" row. A
    backend that fails while running gets an "error" row (its one-line error) and the others go on. `options`
    go to every backend but the reference (e.g. precision), `reference_options` to the reference (default:
    fp32 on torch's default device).
    """
    from slidefuse.runtime.backends import open_backend, registry

    if batch < 1:
        raise UsageError(f"batch {batch}: expected a positive batch size")
    named = backends is not None
    names = list(dict.fromkeys(backends)) if backends is not None else registry.backend_names()
    check_names([reference, *names] if named else [reference])
    avail = registry.available_backends()
    m = bundle.manifest
    tiles = parity_tiles(m.tile_size, m.mpp, n_real=n_tiles, n_random=n_random, seed=seed, slides=slides)
    log.info("parity: %d %s tiles, reference %s, backends %s", len(tiles.tiles), tiles.origin, reference,
             ", ".join(names))
    cache: dict[str, np.ndarray] = {}
    ref_label = f"{reference} (reference)"
    ref_backend = open_backend(reference, bundle, **dict(reference_options or {}))
    ref_report = compare({ref_label: ref_backend}, tiles, batch=batch, warmup=True, outputs=cache)
    rows = [_reference_row(ref_report, reference)]
    for name in names:
        if name == reference and not options:
            continue
        if avail.get(name) is not None:
            rows.append(ParityRow(name, "unavailable", reference=reference, reason=str(avail[name])))
            continue
        if not named and not registry.get_backend(name).computes_model:
            rows.append(ParityRow(name, "unavailable", reference=reference,
                                  reason=f"{name} computes no model (a host benchmark engine); name it to compare"))
            continue
        try:
            backend = open_backend(name, bundle, **dict(options or {}))
            report = compare({ref_label: ref_backend, name: backend}, tiles, thresholds=_thresholds_for,
                             batch=batch, warmup=True, outputs=cache)  # the reference's outputs: `cache`
        except Exception as exc:  # recorded in the row (one line); the other backends still run
            log.debug("parity: %s failed", name, exc_info=True)
            rows.append(ParityRow(name, "error", reference=reference, tile_origin=tiles.origin,
                                  reason=one_line(exc)))
            continue
        rows.append(_candidate_row(report, name, reference))
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
        lines.append(f"{r.backend:<14} {r.status:<11} {r.precision or '-':<9} "
                     f"{_fmt(r.max_abs_diff, '.3g'):>9} {_fmt(r.argmax_agreement, '.5f'):>9} "
                     f"{_fmt(r.load_s, '.2f'):>8} {_fmt(r.tiles_per_s, '.2f'):>9}  {note}")
    return "\n".join(lines)
