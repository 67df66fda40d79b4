"""The cohort table's rebuild cost on a large batch: OUT/summary.csv for N synthetic slides.

    python benchmarks/bench_summary.py [--slides 2000] [--repeats 5] [--workdir /tmp/sfbench-summary]

Writes N report.json files shaped like slidefuse's (3 classes, run options, software versions, slide metadata;
about 5 KB each) and a run log of N entries (every 10th slide failed), then times:
  - cold: the first rebuild in a fresh process's cache (every report parsed);
  - warm: a rebuild with every report cached (one stat per report, then the CSV);
  - record: `RunLog.record` of one more slide (run.json + summary.csv rebuilt from N entries) with and without
    the table, interleaved in the same run (the table's share of each record's cost).
Writes benchmarks/results/summary.json (machine, CPU and ISA, load average, command line) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))

from slidefuse.bench.machine import machine_info  # noqa: E402


def _report(i: int) -> dict[str, Any]:
    classes = ("background", "tumour", "stroma")
    pixels = [4_000_000 + i, 1_000_000 + 7 * i, 500_000 + 3 * i]
    return {
        "format": "slidefuse-report/1", "created": "2024-01-01T00:00:00+00:00",
        "slide": {"path": f"/data/slide{i}.svs", "name": f"slide{i}.svs", "width": 80000, "height": 60000, "mpp": 0.25,
                  "mpp_source": "openslide", "vendor": "aperio", "loader": "openslideload", "objective_power": 40,
                  "levels": [{"width": 80000 // 4**k, "height": 60000 // 4**k, "downsample": 4.0**k} for k in range(4)],
                  "properties": {f"aperio.key{k}": "x" * 40 for k in range(20)},
                  "decode_errors": {"count": i % 3, "tiles": []}},
        "model": {"encoder": "phikon", "classes": [{"index": k, "name": c, "color": [k, k, k]}
                                                   for k, c in enumerate(classes)]},
        "bundle": {"path": "/models/phikon.bundle", "digest": f"{i:064x}", "signature": "unsigned"},
        "backend": {"backend": "ort-cuda", "device": "cuda", "precision": "fp16",
                    "providers": ["CUDAExecutionProvider"]},
        "areas": {c: {"index": k, "pixels": p, "area_mm2": p * 1e-6, "fraction": p / sum(pixels)}
                  for k, (c, p) in enumerate(zip(classes, pixels, strict=True))},
        "tissue": {"pixels": 123456, "area_mm2": 1.6 + i * 1e-4, "fraction": 0.3},
        "tile_counts": {"grid": 5000, "tissue": 1800 + i % 50, "run": 1800 + i % 50},
        "timings": {k: 1.0 + i * 1e-3 for k in ("read", "tissue", "inference", "stitch", "total")},
        "software": {k: "1.0" for k in ("slidefuse", "python", "numpy", "pyvips", "onnxruntime", "shapely")},
        "run": {"options": {f"option{k}": k for k in range(40)}, "run_id": "bench"},
    }


def _make(root: Path, n: int) -> list[dict[str, Any]]:
    if root.exists():
        shutil.rmtree(root)
    entries = []
    for i in range(n):
        d = root / f"slide{i}"
        d.mkdir(parents=True)
        failed = i % 10 == 9
        if not failed:
            (d / "report.json").write_text(json.dumps(_report(i), indent=2))
        entries.append({"slide": f"/data/slide{i}.svs", "slide_key": f"/data/slide{i}.svs",
                        "status": "failed" if failed else "ok", "error": "unreadable" if failed else None,
                        "out_dir": str(d), "outputs": {} if failed else {"report": str(d / "report.json")},
                        "seconds": 30.0 + i % 7, "tiles": None, "decode_errors": None, "t": 1.0 + i})
    (root / ".run").mkdir()
    (root / ".run" / "bench.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    return entries


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slides", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/sfbench-summary"))
    ap.add_argument("--json", type=Path, default=RESULTS / "summary.json")
    args = ap.parse_args(argv)

    from slidefuse.runtime.segment import runlog, summary
    from slidefuse.runtime.segment.runlog import RunLog

    root = args.workdir / "out"
    entries = _make(root, args.slides)
    report_kib = (root / "slide0" / "report.json").stat().st_size / 1024
    cold = _timed(lambda: summary.write_summary_csv(root, entries))
    warm = [_timed(lambda: summary.write_summary_csv(root, entries)) for _ in range(args.repeats)]
    real_rebuild = runlog.rebuild_after_save
    log = RunLog(root, run_id="bench-records")
    with_table: list[float] = []
    without_table: list[float] = []
    for k in range(args.repeats):  # interleaved: with, without, with, ...
        for on, out in ((True, with_table), (False, without_table)):
            runlog.rebuild_after_save = real_rebuild if on else (lambda *_: None)  # type: ignore[assignment]
            slide = f"/data/extra{k}-{on}.svs"
            out.append(_timed(lambda: log.record(slide, "failed", error="bench")))  # noqa: B023 (called at once)
    runlog.rebuild_after_save = real_rebuild
    rows = len(summary.summary_table(runlog.read_run_log(root)).rows)
    med = statistics.median
    result = {
        "command": "python benchmarks/bench_summary.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(), "slides": args.slides, "rows_at_end": rows, "report_kib": round(report_kib, 1),
        "cold_rebuild_s": round(cold, 3), "warm_rebuild_s_median": round(med(warm), 4),
        "warm_rebuild_s": [round(x, 4) for x in warm],
        "record_with_table_s_median": round(med(with_table), 4),
        "record_without_table_s_median": round(med(without_table), 4),
        "record_with_table_s": [round(x, 4) for x in with_table],
        "record_without_table_s": [round(x, 4) for x in without_table],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    print(f"{m['cpu']} [{m['cpu_isa_summary']}], {m['cores']} cores, load {m['load_average']}")
    print(f"{args.slides} slides ({report_kib:.1f} KiB per report.json), {rows} rows")
    print(f"rebuild, cold cache (every report parsed): {cold:.3f} s")
    print(f"rebuild, warm cache (median of {args.repeats}): {med(warm):.4f} s")
    print(f"one record (run.json + summary.csv): {med(with_table):.4f} s; without the table: "
          f"{med(without_table):.4f} s (medians, interleaved)")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
