"""What quality control costs, measured with the product's own benchmark: `slidefuse bench slide --qc default`
and `--qc off` on one slide, alternated for `--rounds` rounds (the machine is shared: interleaving spreads its
load over both), each a separate process. Writes the medians and every run's document.

    python benchmarks/qc_cost_bench_slide.py [--slide CMU-1-Small-Region.svs] [--rounds 3]
        [--out benchmarks/results/qc-cost-bench-slide.json]

The model is the demonstration model (slidefuse/data/default); the backend is `bench slide`'s default (auto).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from slides import require_slide  # noqa: E402

MODEL = REPO / "slidefuse" / "data" / "default"
MODES = ("default", "off")


def bench_once(slide: Path, mode: str, json_path: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "slidefuse", "bench", "slide", str(slide), "--model", str(MODEL), "--qc", mode,
           "--json", str(json_path)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    doc: dict[str, Any] = json.loads(json_path.read_text())
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide", default="CMU-1-Small-Region.svs")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "qc-cost-bench-slide.json")
    a = ap.parse_args()
    slide = require_slide(a.slide)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.rounds):
            for mode in MODES:
                runs[mode].append(bench_once(slide, mode, Path(tmp) / f"{mode}-{i}.json"))
    total = {m: [r["summary"]["stages_s"]["total"] for r in runs[m]] for m in MODES}
    qc = {m: [r["summary"]["stages_s"]["qc"] for r in runs[m]] for m in MODES}
    med = {m: statistics.median(total[m]) for m in MODES}
    first = runs["default"][0]
    doc = {
        "command": f"python benchmarks/qc_cost_bench_slide.py --slide {a.slide} --rounds {a.rounds}",
        "each_run": f"slidefuse bench slide {slide.name} --model slidefuse/data/default --qc MODE --json FILE",
        "slide": slide.name, "model": first["model"], "backend": first["backend"]["info"].get("backend"),
        "machine": first["machine"], "rounds": a.rounds, "order": "default, off, default, off, ...",
        "wall_s": total, "qc_stage_s": qc, "median_wall_s": med,
        "median_qc_stage_s": {m: statistics.median(qc[m]) for m in MODES},
        "qc_adds_fraction_of_wall_time": med["default"] / med["off"] - 1.0,
        "qc_stage_fraction_of_wall_time_default": statistics.median(
            q / t for q, t in zip(qc["default"], total["default"], strict=True)),
        "note": "qc off still runs the stain check (its time is the off runs' qc stage)",
        "runs": runs,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=1) + "\n")
    m = first["machine"]
    print(f"CPU: {m['cpu']} [{m['cpu_isa_summary']}], {m['cores']} cores; backend {doc['backend']}")
    for mode in MODES:
        print(f"--qc {mode:7s} wall {', '.join(f'{t:.2f}' for t in total[mode])} s (median {med[mode]:.2f}), "
              f"qc stage {', '.join(f'{t:.2f}' for t in qc[mode])} s")
    print(f"QC adds {100 * doc['qc_adds_fraction_of_wall_time']:+.1f}% to the median wall time; the qc stage is "
          f"{100 * doc['qc_stage_fraction_of_wall_time_default']:.1f}% of it (median); wrote {a.out}")


if __name__ == "__main__":
    main()
