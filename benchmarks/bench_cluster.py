"""Slides/s of `slidefuse segment` on Ray with 1 and 2 workers on this machine, against one process, and the
Ray driver's overhead per slide.

    python benchmarks/bench_cluster.py                 # 8 slides of 4096 px, JSON in benchmarks/results/cluster.json
    python benchmarks/bench_cluster.py --slides 4 --size 2048 --repeats 1     # quicker

The slides are pyramidal JPEG TIFFs of real H&E windows at 0.5 um/px (`make_slides.py`, half tissue, one seed
each), segmented with the bundled demonstration model (slidefuse/data/default, 128 px tiles at 2 um/px) on the
ort-cpu backend, every format written. Configurations, each into a fresh OUT:

- `local-1t`: `segment_many` in this process, one engine thread (the baseline a Ray worker of 1 CPU matches);
- `local-2t`: the same with two engine threads;
- `ray-1w` / `ray-2w`: `segment_on_ray` on a local Ray instance of 2 CPUs with 1 or 2 workers of 1 CPU each.

For Ray runs, `run_s` is the wall time from the workers being ready to the last slide recorded (what a long
batch pays per slide), `start_s` the time to start the workers (paid once per batch). The configurations are
interleaved within each repeat (the machine is shared: load drifts) and the fastest run of each is kept.

The driver's overhead per slide is measured on `--tiny-slides` slides of 512 px (one or two tiles each, so
the slide's own work is small): `ray-1w-tiny`'s run time per slide minus `local-1t-tiny`'s (task hand-out,
result transport, claims and run.json, through Ray), and the driver process's own CPU time per slide (Ray's
driver threads included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CACHE = RESULTS / ".cache"
sys.path.insert(0, str(REPO))


def ensure_slides(n: int, size: int) -> list[Path]:
    """`n` benchmark slides (made once, cached)."""
    from benchmarks.make_slides import make_slide

    CACHE.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = CACHE / f"cluster-{size}-{i}.tif"
        if not path.exists():
            make_slide(path, size, 1.0 if size <= 1024 else 0.5, mpp=0.5, seed=i, cell=min(size, 1024))
        out.append(path)
    return out


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_local(slides: list[Path], out: Path, threads: int) -> dict[str, Any]:
    from slidefuse.runtime.bundle import load_bundle
    from slidefuse.runtime.segment import SegmentOptions, segment_many

    bundle = load_bundle(REPO / "slidefuse" / "data" / "default")
    options = SegmentOptions(backend_options={"threads": threads}, workers=2)
    t0 = time.perf_counter()
    results = segment_many(slides, bundle, out, options)
    wall = time.perf_counter() - t0
    assert all(r.status == "ok" for r in results), [r.error for r in results]
    tiles = sum(r.tile_counts["run"] for r in results)
    return {"run_s": round(wall, 3), "slides_per_s": round(len(slides) / wall, 3), "tiles": tiles,
            "tiles_per_s": round(tiles / wall, 1)}


def run_ray(slides: list[Path], out: Path, workers: int) -> dict[str, Any]:
    from slidefuse.distributed import ClusterStatus, RayConfig, segment_on_ray
    from slidefuse.runtime.bundle import load_bundle
    from slidefuse.runtime.segment import SegmentOptions

    bundle = load_bundle(REPO / "slidefuse" / "data" / "default")
    options = SegmentOptions(workers=2)
    seen: list[ClusterStatus] = []
    cpu0, t0 = _cpu(), time.perf_counter()
    results = segment_on_ray(slides, bundle, out, options, RayConfig(workers=workers, status_interval=3600),
                             on_status=seen.append)
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    assert all(r.status == "ok" for r in results), [r.error for r in results]
    run_s = seen[-1].elapsed  # from the workers being ready to the last slide recorded
    tiles = sum(r.tile_counts["run"] for r in results)
    return {"wall_s": round(wall, 3), "start_s": round(wall - run_s, 3), "run_s": round(run_s, 3),
            "slides_per_s": round(len(slides) / run_s, 3), "tiles": tiles, "tiles_per_s": round(tiles / run_s, 1),
            "driver_cpu_s_per_slide": round(cpu / len(slides), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=8)
    ap.add_argument("--size", type=int, default=4096, help="slide width and height, px at 0.5 um/px")
    ap.add_argument("--repeats", type=int, default=2, help="runs per configuration (the fastest is kept)")
    ap.add_argument("--tiny-slides", type=int, default=24, help="512 px slides for the driver's overhead")
    ap.add_argument("--out", type=Path, default=RESULTS / "cluster.json")
    args = ap.parse_args()

    import ray

    slides = ensure_slides(args.slides, args.size)
    tiny = ensure_slides(args.tiny_slides, 512)
    scratch = CACHE / "cluster-out"
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    configs = [("local-1t", lambda o: run_local(slides, o, 1)), ("local-2t", lambda o: run_local(slides, o, 2)),
               ("ray-1w", lambda o: run_ray(slides, o, 1)), ("ray-2w", lambda o: run_ray(slides, o, 2)),
               ("local-1t-tiny", lambda o: run_local(tiny, o, 1)), ("ray-1w-tiny", lambda o: run_ray(tiny, o, 1))]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in configs}
    try:
        for _ in range(args.repeats):
            for name, fn in configs:
                shutil.rmtree(scratch, ignore_errors=True)
                runs[name].append(fn(scratch))
                print(f"{name:13s} {runs[name][-1]['slides_per_s']:6.3f} slides/s  "
                      f"{runs[name][-1]['tiles_per_s']:7.1f} tiles/s  load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    rows: dict[str, dict[str, Any]] = {}
    for name, done in runs.items():
        rows[name] = dict(min(done, key=lambda r: r["run_s"]), run_s_all=[r["run_s"] for r in done])
    n_tiny = args.tiny_slides
    summary = {
        "speedup_ray_2w_over_1w": round(rows["ray-2w"]["slides_per_s"] / rows["ray-1w"]["slides_per_s"], 3),
        "speedup_local_2t_over_1t": round(rows["local-2t"]["slides_per_s"] / rows["local-1t"]["slides_per_s"], 3),
        "ray_1w_over_local_1t": round(rows["ray-1w"]["slides_per_s"] / rows["local-1t"]["slides_per_s"], 3),
        "driver_overhead_s_per_slide": round((rows["ray-1w-tiny"]["run_s"] - rows["local-1t-tiny"]["run_s"])
                                             / n_tiny, 4),
        "driver_cpu_s_per_slide": rows["ray-1w-tiny"]["driver_cpu_s_per_slide"],
    }
    print(json.dumps(summary, indent=2))
    doc = {"command": " ".join(["python benchmarks/bench_cluster.py", *sys.argv[1:]]), "slides": args.slides,
           "tiny_slides": n_tiny,
           "slide_px": args.size, "model": "slidefuse/data/default", "backend": "ort-cpu",
           "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "load_before_and_after": [load_before, os.getloadavg()], "rows": rows, "summary": summary}
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


load_before = os.getloadavg()

if __name__ == "__main__":
    main()
