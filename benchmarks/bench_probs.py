"""What the stitched probabilities cost a `segment` run: the same slide with probabilities off and on, interleaved.

    .venv/bin/python benchmarks/bench_probs.py                       # 12k bench slide, formats tiff vs tiff,probs
    .venv/bin/python benchmarks/bench_probs.py --pair geojson        # mask.geojson without / with Mean probability

Each run is a fresh `segment_many` subprocess (``bench_memory.py``'s child: the pure-ONNX colour-classifier
bundle, the synthetic slide of ``make_slides.py``), so peak RSS is per run. ``--pair tiff`` compares formats
``tiff,report`` with ``tiff,probs,report``. ``--pair geojson`` runs ``geojson,report`` with the probability
scratch file (for the features' mean probability) and without it (``SLIDEFUSE_BENCH_NO_PROBS=1`` makes the child
drop "geojson" from the formats that need probabilities, the behaviour before measurements). Off and on alternate
within each repeat. Reported: wall seconds, the stitch and write stages, peak RSS. Results:
``benchmarks/results/probs-cost-<pair>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))


def child(slide: Path, bundle: Path, out: Path, formats: str, no_probs: bool) -> dict[str, Any]:
    env = {**os.environ, "SLIDEFUSE_BENCH_NO_PROBS": "1" if no_probs else ""}
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_probs.py"), "--child", str(slide), str(bundle), str(out),
           formats]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"child failed ({proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def child_main(slide: str, bundle_dir: str, out: str, formats: str) -> int:
    import resource
    import time

    if os.environ.get("SLIDEFUSE_BENCH_NO_PROBS"):
        from slidefuse.runtime.outputs import probs

        probs.NEEDS_PROBABILITIES = frozenset({probs.PROBS_FORMAT, probs.PROBS_ZARR_FORMAT})
    from slidefuse.runtime.bundle import load_bundle
    from slidefuse.runtime.segment import SegmentOptions, segment_many

    options = SegmentOptions(backend="ort-cpu", backend_options={"threads": 2}, batch_size=8, workers=2,
                             formats=frozenset(formats.split(",")), overwrite=True)
    t0 = time.perf_counter()
    results = list(segment_many([Path(slide)], load_bundle(bundle_dir), Path(out), options))
    wall = time.perf_counter() - t0
    report = json.loads(next(Path(out).glob("*/report.json")).read_text())
    timings = results[0].timings  # stages of the slide, the outputs' "write" included
    print(json.dumps({"status": str(results[0].status), "wall_s": round(wall, 2),
                      "stitch_s": round(float(timings.get("stitch", 0.0)), 2),
                      "write_s": round(float(timings.get("write", 0.0)), 2),
                      "outputs_s": {k: round(float(v.get("seconds", 0.0)), 2)
                                    for k, v in report.get("outputs", {}).items()},
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child_main(*sys.argv[2:6])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", choices=("tiff", "geojson"), default="tiff")
    ap.add_argument("--size", type=int, default=12000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/slidefuse-bench"))
    a = ap.parse_args()
    from bench_memory import make_or_reuse_bundle, make_or_reuse_slide

    from slidefuse.bench.machine import cpu_isa, cpu_model, isa_summary

    cpu = f"{cpu_model()} [{isa_summary(cpu_isa())}]"
    print(f"CPU: {cpu}", flush=True)
    a.workdir.mkdir(parents=True, exist_ok=True)
    bundle = make_or_reuse_bundle(a.workdir, 256, 1.0, 32)
    slide, _ = make_or_reuse_slide(a.workdir, a.size, 0.3)
    variants = {"tiff": [("off", "tiff,report", False), ("on", "tiff,probs,report", False)],
                "geojson": [("off", "geojson,report", True), ("on", "geojson,report", False)]}[a.pair]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in variants}
    for _ in range(a.repeats):
        for name, formats, no_probs in variants:  # interleaved
            r = child(slide, bundle, a.workdir / f"probs_{a.pair}_{name}", formats, no_probs)
            runs[name].append(r)
            print(f"probabilities {name:<3} ({formats}): {r['wall_s']} s, stitch {r['stitch_s']} s, write "
                  f"{r['write_s']} s {r['outputs_s']}, peak RSS {r['peak_rss_mib']} MiB", flush=True)
    best = {k: min(v, key=lambda r: r["wall_s"]) for k, v in runs.items()}
    doc = {"command": "python benchmarks/bench_probs.py " + " ".join(sys.argv[1:]), "cpu": cpu,
           "cpus": os.cpu_count(), "load": os.getloadavg(), "slide_px": a.size, "pair": a.pair, "runs": runs,
           "best_wall_ratio_on_over_off": round(best["on"]["wall_s"] / best["off"]["wall_s"], 3),
           "note": "2 CPU cores shared with other jobs while measured: times are noisy"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"probs-cost-{a.pair}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"best wall on / off: {doc['best_wall_ratio_on_over_off']}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
