"""Host ceiling of the slide runtime: reading, batching and stitching with a zero-cost engine (`null`).

    python benchmarks/bench_host.py                       # the sweep below, JSON in benchmarks/results/host.json
    python benchmarks/bench_host.py --quick               # cores 1,2 on the 512 px / 3-class JPEG TIFF only
    python benchmarks/bench_host.py --quick --probs both --out benchmarks/results/host-probs.json
                                                          # stitched probabilities off and on, interleaved

Each configuration runs in a fresh subprocess pinned to N cores (``sched_setaffinity``; libvips' thread pool
and the reader threads follow it), so "1 vs 2 cores" measures how the whole host side scales. The slide is an
8000 x 8000 pyramidal JPEG TIFF of real H&E windows at 0.5 um/px (``make_slides.py``, full tissue) and, for
OpenSlide's reader, the same pixels as an Aperio SVS. Every grid tile runs (no tissue selection: the ceiling),
through ``run_pipeline`` + ``Stitcher`` exactly as ``segment`` does, with the ``null`` backend returning fixed
probabilities at once. Reported per configuration: tiles/s (wall), CPU cores used (process CPU time / wall),
and the pipeline's per-stage seconds. Sweeps: cores (1, 2, ...), tile (256, 512), classes (2, 3, 8), format
(JPEG TIFF through tiffload, SVS through OpenSlide). ``--probs both`` runs every configuration with the
stitcher's probability file off and on, alternating within each repeat (the machine's load hits both alike), and
reports the ceiling's drop with probabilities on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CACHE = RESULTS / ".cache"
sys.path.insert(0, str(REPO))


def ensure_slides(size: int) -> dict[str, Path]:
    """The JPEG TIFF and the Aperio SVS of the benchmark (made once, cached)."""
    import pyvips

    from benchmarks.make_slides import make_slide

    CACHE.mkdir(parents=True, exist_ok=True)
    tif = CACHE / f"host-{size}.tif"
    if not tif.exists():
        make_slide(tif, size, 1.0, mpp=0.5)
    svs = CACHE / f"host-{size}.svs"
    if not svs.exists():
        im = pyvips.Image.tiffload(str(tif)).copy()
        im.set_type(pyvips.GValue.gstr_type, "image-description",
                    f"Aperio Image Library v12.0.0\n{size}x{size} [0,0 {size}x{size}] (256x256) JPEG/RGB Q=85"
                    "|AppMag = 20|MPP = 0.5")
        tmp = svs.with_name(svs.name + ".tmp.svs")
        im.tiffsave(str(tmp), tile=True, tile_width=256, tile_height=256, pyramid=True, compression="jpeg", Q=85,
                    bigtiff=False)
        os.replace(tmp, svs)
    return {"tiff": tif, "svs": svs}


def one(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration in this process (already pinned) and return its figures."""
    import dataclasses
    import resource
    import tempfile

    from slidefuse.runtime.backends import open_backend
    from slidefuse.runtime.bundle import Bundle, ClassInfo, Manifest
    from slidefuse.runtime.grid import TileGrid
    from slidefuse.runtime.pipeline import PipelineOptions, run_pipeline
    from slidefuse.runtime.slide import open_slide
    from slidefuse.runtime.stitch import Stitcher

    classes = tuple(ClassInfo(f"c{i}", (i * 30 % 256, 100, 200)) for i in range(cfg["classes"]))
    manifest = Manifest(encoder="null", patch_size=16, tile_size=cfg["tile"], mpp=0.5, classes=classes,
                        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    bundle = Bundle(Path("null"), dataclasses.replace(manifest), "null")
    with open_slide(cfg["slide"]) as slide, open_backend("null", bundle, copy=cfg.get("null_copy", True)) as backend:
        view = slide.scaled(0.5)
        grid = TileGrid(view.width, view.height, cfg["tile"], cfg["overlap"], margin=cfg["overlap"])
        tiles = list(grid.tiles())
        with tempfile.TemporaryDirectory() as tmp:
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            if cfg.get("legacy"):  # the stitcher before the interior fast path and its threads, for comparison
                from tests.runtime.legacy_stitch import LegacyStitcher

                st_ctx: Any = LegacyStitcher(grid, cfg["classes"], Path(tmp) / "m.raw")
            else:
                probs = Path(tmp) / "p.raw" if cfg.get("probs") else None
                st_ctx = Stitcher(grid, cfg["classes"], Path(tmp) / "m.raw", threads=cfg["stitch_threads"],
                                  probs_path=probs)
            with st_ctx as st:
                stats = run_pipeline(view, grid, tiles, backend, st,
                                     PipelineOptions(batch_size=cfg["batch"], workers=cfg["workers"]))
                st.finish()
            wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {**{k: v for k, v in cfg.items() if k != "slide"}, "tiles": len(tiles), "wall_s": round(wall, 3),
            "tiles_per_s": round(len(tiles) / wall, 1), "cpu_s": round(cpu, 2), "cores_used": round(cpu / wall, 2),
            "stages": {k: round(v, 3) for k, v in stats.as_dict().items()},
            "stitch_ms_per_tile": round(1000 * stats.stitch / max(1, len(tiles)), 3)}


def run_pinned(cfg: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "VIPS_CONCURRENCY": str(cfg["cores"])}
    out = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def plan(args: argparse.Namespace, slides: dict[str, Path]) -> list[dict[str, Any]]:
    base = {"tile": 512, "overlap": 64, "classes": 3, "batch": 8, "format": "tiff"}
    cores = [int(c) for c in args.cores.split(",")]
    cfgs = [{**base, "cores": c} for c in cores]
    if not args.quick:
        top = max(cores)
        cfgs += [{**base, "cores": top, "tile": 256, "overlap": 32}]
        cfgs += [{**base, "cores": top, "classes": n} for n in (2, 8)]
        cfgs += [{**base, "cores": c, "format": "svs"} for c in cores]
    for c in cfgs:
        c["slide"] = str(slides[c["format"]])
        c["workers"] = args.workers or max(2, 2 * c["cores"])
        c["stitch_threads"] = args.stitch_threads or c["cores"]
        c["null_copy"] = not args.no_copy
        c["legacy"] = args.legacy_stitcher
    return cfgs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=8000)
    ap.add_argument("--cores", default=",".join(str(c) for c in range(1, (os.cpu_count() or 1) + 1)))
    ap.add_argument("--workers", type=int, default=0, help="reader threads (default: 2 per core)")
    ap.add_argument("--stitch-threads", type=int, default=0, help="stitcher threads (default: one per core)")
    ap.add_argument("--legacy-stitcher", action="store_true", help="the previous stitcher (tests/runtime/...)")
    ap.add_argument("--no-copy", action="store_true", help="null engine hands out a shared view (no output copy)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "host.json")
    ap.add_argument("--probs", choices=("off", "on", "both"), default="off",
                    help="the stitcher's probability file: off, on, or both (interleaved, with the drop)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        cfg = json.loads(args.one)
        os.sched_setaffinity(0, set(range(cfg["cores"])))
        print(json.dumps(one(cfg)))
        return
    from slidefuse.bench.machine import cpu_isa, cpu_model, isa_summary

    slides = ensure_slides(args.size)
    cpu = f"{cpu_model()} [{isa_summary(cpu_isa())}]"
    print(f"CPU: {cpu}", flush=True)
    rows, drops = [], []
    variants = {"off": [False], "on": [True], "both": [False, True]}[args.probs]
    for cfg in plan(args, slides):
        runs: dict[bool, list[dict[str, Any]]] = {v: [] for v in variants}
        for _ in range(args.repeats):
            for v in variants:  # interleaved: off, on, off, on, ...
                runs[v].append(run_pinned({**cfg, "probs": v}))
        best_of = {}
        for v, vr in runs.items():
            best = max(vr, key=lambda r: r["tiles_per_s"])
            best["tiles_per_s_all"] = [r["tiles_per_s"] for r in vr]
            rows.append(best)
            best_of[v] = best
            print(f"{cfg['format']:<5} cores {cfg['cores']} tile {cfg['tile']} C {cfg['classes']} probs "
                  f"{'on ' if v else 'off'}: {best['tiles_per_s']:7.1f} tiles/s (runs {best['tiles_per_s_all']}), "
                  f"cores used {best['cores_used']}, stitch {best['stitch_ms_per_tile']} ms/tile", flush=True)
        if len(best_of) == 2:
            drop = 1 - best_of[True]["tiles_per_s"] / best_of[False]["tiles_per_s"]
            drops.append({"cores": cfg["cores"], "tile": cfg["tile"], "classes": cfg["classes"],
                          "format": cfg["format"], "ceiling_drop": round(drop, 3)})
            print(f"  probabilities on: ceiling {100 * drop:+.1f}% lower (target <= 15%)", flush=True)
    doc = {"command": " ".join(["python benchmarks/bench_host.py", *sys.argv[1:]]), "slide_px": args.size,
           "machine": platform.processor() or platform.machine(), "cpu": cpu, "cpus": os.cpu_count(),
           "load": os.getloadavg(), "rows": rows}
    if drops:
        doc["probs_ceiling_drop"] = drops
        doc["probs_pass"] = all(d["ceiling_drop"] <= 0.15 for d in drops)
    args.out.write_text(json.dumps(doc, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
