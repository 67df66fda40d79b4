"""Side by side with TIAToolbox: the same slide, network weights, tile size, batch and threads, interleaved rounds.

    python benchmarks/anchors/run_anchors.py --bundle PHIKON.bundle --slide CMU-1-Small-Region.svs \\
        --tia-python PEERS/tiatoolbox/bin/python [--rounds 2] [--batch 8] [--threads 2]

`install_tiatoolbox.sh` makes TIAToolbox's own environment (slidefuse never imports it). Each round runs, each in
a fresh process wrapped by `peak_rss.py` (the peak RSS of the whole process tree's largest member, from
getrusage(RUSAGE_CHILDREN)):

- `slidefuse segment SLIDE --model BUNDLE` with no backend flag (auto: the fastest path gated for this CPU's ISA
  class), `--batch`, on `--threads` cores (taskset when the machine has more), mask.tif only;
- `tia_segment.py` in TIAToolbox's environment: TIAToolbox's SemanticSegmentor over the same slide with the same
  network (the bundle's own weights, model.safetensors, rebuilt by slidefuse.model in that environment), the
  bundle's tile size and pixel size, the same overlap, batch and torch threads; its class map saved as .npy.

Mask agreement: the fraction of pixels with the same class, over the whole slide and over the tissue that
slidefuse's report found, after TIAToolbox's map is resampled (nearest) to slidefuse's mask grid. Writes
benchmarks/results/anchors.json with the CPU model and ISA, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))


def _pinned(threads: int) -> list[str]:
    """taskset onto the first `threads` usable cores, when there are more (both tools then see the same cores)."""
    cores = sorted(os.sched_getaffinity(0))
    return ["taskset", "-c", ",".join(map(str, cores[:threads]))] if len(cores) > threads else []


def _measure(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run `cmd` under peak_rss.py; its wall seconds and peak RSS in MiB (or the error, with its output)."""
    wrapped = [sys.executable, str(HERE / "peak_rss.py"), "--", *cmd]
    run = subprocess.run(wrapped, capture_output=True, text=True, env=env, check=False)
    last = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else "{}"
    fig = dict(json.loads(last)) if last.startswith("{") else {}
    if run.returncode != 0 or fig.get("rc", 1) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return fig


def _slidefuse(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    cmd = [*_pinned(args.threads), sys.executable, "-m", "slidefuse", "-q", "segment", str(args.slide), "--model",
           str(args.bundle), "--out", str(out), "--batch", str(args.batch), "--formats", "tiff,report",
           "--overwrite"]
    fig = _measure(cmd, {**os.environ, "PYTHONPATH": str(REPO)})
    report = json.loads(next(out.glob("*/report.json")).read_text())
    backend = report.get("backend", {})
    fig["backend"] = {k: backend.get(k) for k in ("backend", "precision", "graph", "threads", "gate")}
    return fig


def _tia(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    cmd = [*_pinned(args.threads), str(args.tia_python), str(HERE / "tia_segment.py"), "--bundle", str(args.bundle),
           "--slide", str(args.slide), "--out", str(out), "--batch", str(args.batch), "--threads", str(args.threads)]
    return _measure(cmd, {**os.environ, "PYTHONPATH": str(REPO)})


def _agreement(sf_out: Path, tia_out: Path) -> dict[str, float]:
    """Pixel agreement of the two class maps on slidefuse's mask grid (TIAToolbox's resampled, nearest)."""
    import numpy as np
    import pyvips

    mask = next(sf_out.glob("*/mask.tif"))
    ours = np.ndarray(buffer=pyvips.Image.new_from_file(str(mask), page=0).write_to_memory(), dtype=np.uint8,
                      shape=(pyvips.Image.new_from_file(str(mask), page=0).height,
                             pyvips.Image.new_from_file(str(mask), page=0).width))
    theirs = np.load(tia_out / "classes.npy")
    rows = (np.arange(ours.shape[0]) * theirs.shape[0] // ours.shape[0]).clip(0, theirs.shape[0] - 1)
    cols = (np.arange(ours.shape[1]) * theirs.shape[1] // ours.shape[1]).clip(0, theirs.shape[1] - 1)
    theirs = theirs[rows][:, cols]
    same = ours == theirs
    fg = (ours > 0) | (theirs > 0)
    return {"all_pixels": float(same.mean()), "either_foreground": float(same[fg].mean()) if fg.any() else 1.0,
            "mask_shape": list(ours.shape), "tia_shape": list(np.load(tia_out / "classes.npy").shape)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--slide", type=Path, required=True)
    ap.add_argument("--tia-python", type=Path, required=True, help="python of TIAToolbox's environment")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "anchors.json")
    args = ap.parse_args()
    from slidefuse.bench.machine import machine_info
    from slidefuse.runtime.cpuinfo import this_cpu

    machine = machine_info()
    print(f"CPU: {machine['cpu']} ({machine['cpu_isa_summary']}; ISA class {this_cpu().isa}), {args.threads} "
          f"threads; slide {args.slide.name}; batch {args.batch}", flush=True)
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="slidefuse-anchors-") as tmp:
        for r in range(args.rounds):
            sf_out, tia_out = Path(tmp) / f"sf{r}", Path(tmp) / f"tia{r}"
            for tool, fn, out in (("slidefuse", _slidefuse, sf_out), ("tiatoolbox", _tia, tia_out)):
                fig = fn(args, out)
                rows.append({"round": r, "tool": tool, **fig})
                print(f"round {r} {tool:10s} wall {fig['wall_s']:7.1f} s  peak RSS {fig['peak_rss_mib']:7.0f} MiB",
                      flush=True)
            rows[-1]["agreement"] = _agreement(sf_out, tia_out)
            print(f"  agreement {rows[-1]['agreement']}", flush=True)
            summary = _save(args, machine, rows)  # after every round: a cut-short run keeps its rounds
    print(json.dumps(summary))


def _save(args: argparse.Namespace, machine: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Write the results so far (with the per-round ratios) to `args.out`; returns the ratios."""
    from slidefuse.runtime.cpuinfo import this_cpu

    sf = [x for x in rows if x["tool"] == "slidefuse"]
    tia = [x for x in rows if x["tool"] == "tiatoolbox"]
    summary = {"speedup_per_round": [round(t["wall_s"] / s["wall_s"], 2) for s, t in zip(sf, tia, strict=True)],
               "rss_ratio_per_round": [round(s["peak_rss_mib"] / t["peak_rss_mib"], 2)
                                       for s, t in zip(sf, tia, strict=True)]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "machine": machine, "isa_class": this_cpu().isa,
                                    "slide": args.slide.name, "batch": args.batch, "threads": args.threads,
                                    "rounds_done": len(tia), "summary": summary, "runs": rows}, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main()
