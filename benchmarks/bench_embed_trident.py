"""`slidefuse embed` against TRIDENT's patch-feature extraction on the same slide, tiles, pixel size and threads.

    python benchmarks/bench_embed_trident.py --bundle PHIKON_EMBED_BUNDLE --weights CKPT/model.safetensors \\
        --slide CMU-1-Small-Region.svs [--trident-python /work/peers/trident/bin/python] [--repeats 2]

The bundle is phikon (ViT-B/16) exported with `slidefuse export phikon --task embed --encoder-weights W --mpp M
--tile 224` from the same random checkpoint TRIDENT loads (`W`, transformers layout, as owkin/phikon ships it),
with M the slide's own pixel size (so both read level-0 pixels, no resampling). Rounds interleave every slidefuse
CPU path given (--paths: backend[:precision], e.g. ort-cpu, ov-cpu:bf16, ov-cpu:int8) with TRIDENT, each in a
fresh process whose peak RSS the kernel reports (`wait4`). TRIDENT runs on slidefuse's tile corners
(benchmarks/trident_side.py: its own coords_to_h5 + extract_patch_features), so both embed the same tiles.
Reported: seconds and tiles/s (slidefuse: the slide's time in run.json, planning included; TRIDENT: its
extract_patch_features), whole-process wall and peak RSS, per-tile cosine similarity of each slidefuse path to
TRIDENT's features, and TRIDENT's own readers on slidefuse's features.h5 (N, D, coordinates). Results:
benchmarks/results/embed-trident-<slide>.json with the commands, CPU and ISA.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> tuple[str, float, int]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed: {err[-3000:]}")
    return out, wall, int(usage.ru_maxrss)


def slidefuse_run(path: str, a: argparse.Namespace, out: Path) -> dict[str, Any]:
    backend, _, precision = path.partition(":")
    cmd = [sys.executable, "-c", "from slidefuse.cli import main; main()", "-q", "embed", str(a.slide), "--model",
           str(a.bundle), "--out", str(out), "--overwrite", "--threads", str(a.threads), "--batch", str(a.batch),
           "--workers", str(a.workers), "--backend", backend, *(["--option", f"precision={precision}"] if precision
                                                                 else [])]
    _, wall, rss = run_measured(cmd, env={**os.environ, "PYTHONPATH": str(REPO)})
    entry = json.loads((out / "run.json").read_text())["slides"][-1]
    return {"path": path, "tiles": entry["tiles"], "seconds": entry["seconds"],
            "tiles_per_s": round(entry["tiles"] / entry["seconds"], 2), "process_wall_s": round(wall, 2),
            "peak_rss_mib": round(rss / 1024, 1), "command": "slidefuse " + " ".join(cmd[4:]),
            "features": str(next(out.glob("*/features.h5")))}


def trident_run(a: argparse.Namespace, coords_from: str, out: Path) -> dict[str, Any]:
    cmd = [a.trident_python, str(REPO / "benchmarks" / "trident_side.py"), "extract", "--slide", str(a.slide),
           "--coords-from", coords_from, "--weights", str(a.weights), "--out", str(out), "--threads",
           str(a.threads), "--batch", str(a.batch), "--workers", str(a.workers)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    stdout, wall, rss = run_measured(cmd, env=env)
    rec = json.loads(stdout.strip().splitlines()[-1])
    rec.update(process_wall_s=round(wall, 2), peak_rss_mib=round(rss / 1024, 1), command=" ".join(cmd))
    return dict(rec)


def load(path: str) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    with h5py.File(path, "r") as f:
        return f["features"][:].astype(np.float64), f["coords"][:]


def cosine_common(ref_path: str, path: str) -> dict[str, Any]:
    """Per-tile cosine of two feature files on the tiles (coordinates) both hold: over the tiles inside the slide,
    and over the edge tiles that reach past it (slidefuse pads those with white glass; TRIDENT's OpenSlide reads
    give transparent pixels there), reported apart."""
    import h5py

    fr, cr = load(ref_path)
    f, c = load(path)
    with h5py.File(path, "r") as h:
        size = int(h["coords"].attrs["patch_size_level0"])
        width, height = int(h["coords"].attrs["level0_width"]), int(h["coords"].attrs["level0_height"])
    index = {tuple(xy): i for i, xy in enumerate(c)}
    pairs = [(i, index[tuple(xy)]) for i, xy in enumerate(cr) if tuple(xy) in index]
    a_rows = fr[[p[0] for p in pairs]]
    b_rows = f[[p[1] for p in pairs]]
    cos = (a_rows * b_rows).sum(1) / (np.linalg.norm(a_rows, axis=1) * np.linalg.norm(b_rows, axis=1))
    xy = cr[[p[0] for p in pairs]]
    inside = (xy[:, 0] + size <= width) & (xy[:, 1] + size <= height)
    out: dict[str, Any] = {"common_tiles": len(pairs), "inside_tiles": int(inside.sum())}
    for label, sel in (("inside", inside), ("edge", ~inside)):
        if sel.any():
            out[label] = {"tiles": int(sel.sum()), "min_cosine": float(cos[sel].min()),
                          "mean_cosine": float(cos[sel].mean()),
                          "max_abs_diff": float(np.abs(a_rows[sel] - b_rows[sel]).max())}
    return out


def reader_check(a: argparse.Namespace, features: str, out: Path) -> dict[str, Any]:
    cmd = [a.trident_python, str(REPO / "benchmarks" / "trident_side.py"), "read", "--slide", str(a.slide),
           "--features", features, "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    stdout, _, _ = run_measured(cmd, env=env)
    got = json.loads(stdout.strip().splitlines()[-1])
    feats, coords = load(features)
    mean = feats.mean(0)
    slide_feature = np.asarray(got.pop("slide_feature"))
    return {**got, "command": " ".join(cmd), "same_n": got["n"] == len(coords),
            "same_coords": got["coords_sha256"] == hashlib.sha256(coords.astype(np.int64).tobytes()).hexdigest(),
            "same_d": got["slide_feature_dim"] == feats.shape[1],
            "mean_feature_max_abs_diff": float(np.abs(slide_feature - mean).max())}


def compare_only(a: argparse.Namespace) -> int:
    """The comparison part again, on the feature files of a saved result (its last round)."""
    result = json.loads(a.compare_only.read_text())
    last = result["rounds"][-1]
    paths = [p for p in last if p != "trident"]
    result["cosine_vs_trident"] = {p: cosine_common(last["trident"]["features"], last[p]["features"]) for p in paths}
    a.compare_only.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["cosine_vs_trident"], indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    from slidefuse.bench.machine import cpu_isa, cpu_model, isa_summary, load_average

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--slide", type=Path, required=True)
    ap.add_argument("--trident-python", default="/work/peers/trident/bin/python")
    ap.add_argument("--paths", default="ort-cpu,ov-cpu:bf16,ov-cpu:int8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/slidefuse-bench-trident"))
    ap.add_argument("--compare-only", type=Path, default=None, metavar="RESULT_JSON",
                    help="recompute the feature comparison and reader check of a saved result (no new runs)")
    a = ap.parse_args(argv)
    if a.compare_only is not None:
        return compare_only(a)
    paths = [p for p in a.paths.split(",") if p]
    rounds: list[dict[str, Any]] = []
    first: str | None = None
    for rep in range(a.repeats):
        row: dict[str, Any] = {}
        for p in paths:
            row[p] = slidefuse_run(p, a, a.workdir / f"sf-{p.replace(':', '-')}")
            first = first or row[p]["features"]
            print(rep, p, {k: row[p][k] for k in ("tiles", "seconds", "tiles_per_s", "peak_rss_mib")}, flush=True)
        assert first is not None
        row["trident"] = trident_run(a, first, a.workdir / "trident")
        print(rep, "trident", {k: row["trident"][k] for k in ("tiles", "seconds", "tiles_per_s", "peak_rss_mib")},
              flush=True)
        rounds.append(row)
    last = rounds[-1]
    best = {k: max(r[k]["tiles_per_s"] for r in rounds) for k in [*paths, "trident"]}
    result = {
        "benchmark": "slidefuse embed vs TRIDENT extract_patch_features (phikon ViT-B/16, 224 px)",
        "command": "python benchmarks/bench_embed_trident.py " + " ".join(argv or sys.argv[1:]),
        "slide": a.slide.name, "threads": a.threads, "batch": a.batch, "workers": a.workers,
        "rounds": rounds, "best_tiles_per_s": best,
        "speedup_vs_trident": {p: round(best[p] / best["trident"], 2) for p in paths},
        "cosine_vs_trident": {p: cosine_common(last["trident"]["features"], last[p]["features"]) for p in paths},
        "trident_reads_slidefuse_h5": reader_check(a, last[paths[0]]["features"], a.workdir / "trident-read"),
        "machine": {"cpu": cpu_model(), "isa": isa_summary(cpu_isa()), "cpus": os.cpu_count(),
                    "load_average": load_average()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"embed-trident-{a.slide.stem}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
