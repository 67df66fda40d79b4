"""`slidefuse embed`: host ceiling (null engine) and whole-process peak memory (36k vs 12k px slides).

    python benchmarks/bench_embed.py host     # null engine, 224 px tiles, every tile of an 8000 x 8000 slide
    python benchmarks/bench_embed.py memory   # `slidefuse embed` on 12000 and 36000 px synthetic slides
    (options: --bundle EMBED_BUNDLE, default: the tiny test encoder exported once into --workdir)

host: in a fresh child process pinned to --cores cores, `plan_embedding` + `embed_plan` (reader threads ->
batches -> backend -> features.h5 appended in chunks) run every tile of an 8000 x 8000 pyramidal JPEG TIFF of
real H&E windows at 0.5 um/px (`make_slides.py`) through the `null` backend (fixed embeddings at once); tiles/s
is tiles / wall time of the embedding stage, the host's ceiling.
memory: `slidefuse embed SLIDE --model BUNDLE --out OUT` as a user runs it, in a child process whose peak RSS
the kernel reports (`wait4`): imports, slide, engine and feature file included; 30 % tissue slides of 12000 and
36000 px (9x the tiles). The ratio 36k / 12k is the figure (features are appended in chunks, never held).
Results: benchmarks/results/embed-host.json, embed-memory.json, with the commands, CPU and ISA.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
for _p in (REPO, REPO / "tests", REPO / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


def machine() -> dict[str, Any]:
    from slidefuse.bench.machine import cpu_isa, cpu_model, isa_summary, load_average

    return {"cpu": cpu_model(), "isa": isa_summary(cpu_isa()), "cpus": os.cpu_count(), "load_average": load_average()}


def tiny_bundle(workdir: Path) -> Path:
    """The tiny test encoder (width 64, depth 2) as an embedding bundle at 224 px, 0.5 um/px (made once)."""
    from slidefuse.export.onnx_export import ExportConfig, export_bundle

    out = workdir / "tiny-embed-224.bundle"
    if not (out / "manifest.json").exists():
        export_bundle(ExportConfig(encoder="tiny", classes=(), mpp=0.5, out=out, tile_size=224, random_weights=True,
                                   task="embed", parity_real_tiles=1, parity_random_tiles=1))
    return out


def slide(workdir: Path, size: int, fraction: float) -> Path:
    from make_slides import make_slide

    path = workdir / f"embed-slide-{size}-{int(fraction * 100)}.tif"
    if not path.exists():
        print(f"making {path} ...", flush=True)
        make_slide(path, size, fraction, mpp=0.5)
    return path


def child_host(a: argparse.Namespace) -> int:
    """One host-ceiling run in this process: JSON line on stdout."""
    import slidefuse.runtime.embed  # noqa: F401  (h5py before libvips)
    from slidefuse.runtime.backends import open_backend
    from slidefuse.runtime.bundle import load_bundle
    from slidefuse.runtime.embed.options import EmbedOptions
    from slidefuse.runtime.embed.slide import embed_plan, plan_embedding

    bundle = load_bundle(a.bundle)
    opts = EmbedOptions(backend="null", all_tiles=True, batch_size=a.batch, workers=a.workers)
    plan = plan_embedding(Path(a.slide), bundle, opts)
    with open_backend("null", bundle) as backend:
        t0 = time.perf_counter()
        run = embed_plan(plan, bundle, backend, opts, Path(a.out), {}, "host")
        wall = time.perf_counter() - t0
    cpu = os.times()
    print(json.dumps({"tiles": run.tiles, "wall_s": round(wall, 3), "tiles_per_s": round(run.tiles / wall, 1),
                      "process_cpu_s": round(cpu.user + cpu.system, 2)}))
    return 0


def host(a: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(a.workdir)
    bundle = Path(a.bundle) if a.bundle else tiny_bundle(workdir)
    src = slide(workdir, 8000, 1.0)
    runs = []
    for rep in range(a.repeats):
        out = workdir / f"host-out-{rep}"
        cmd = [sys.executable, __file__, "child-host", "--bundle", str(bundle), "--slide", str(src), "--out", str(out),
               "--batch", str(a.batch), "--workers", str(a.workers)]
        proc = subprocess.run(["taskset", "-c", ",".join(map(str, range(a.cores))), *cmd], capture_output=True,
                              text=True, check=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(runs[-1], flush=True)
    best = max(r["tiles_per_s"] for r in runs)
    return {"benchmark": "embed host ceiling (null engine)", "command": "python benchmarks/bench_embed.py host",
            "slide": "8000 x 8000 px JPEG TIFF (make_slides.py), 0.5 um/px, every tile", "tile": 224,
            "cores": a.cores, "batch": a.batch, "workers": a.workers, "runs": runs, "best_tiles_per_s": best,
            "machine": machine()}


def run_cli(slide_path: Path, bundle: Path, out: Path, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, "-c", "from slidefuse.cli import main; main()", "-q", "embed", str(slide_path), "--model",
           str(bundle), "--out", str(out), "--overwrite", "--threads", str(threads)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"slidefuse embed failed: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")

    with h5py.File(next(out.glob("*/features.h5")), "r") as f:
        n = int(f["features"].shape[0])
    return {"wall_s": round(wall, 2), "peak_rss_kib": usage.ru_maxrss, "tiles": n,
            "command": "slidefuse " + " ".join(cmd[4:])}


def memory(a: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(a.workdir)
    bundle = Path(a.bundle) if a.bundle else tiny_bundle(workdir)
    sizes = [12000, 36000]
    slides = {s: slide(workdir, s, 0.3) for s in sizes}
    rows: dict[int, list[dict[str, Any]]] = {s: [] for s in sizes}
    for _ in range(a.repeats):  # interleaved
        for s in sizes:
            rows[s].append(run_cli(slides[s], bundle, workdir / f"mem-out-{s}", a.threads))
            print(s, rows[s][-1], flush=True)
    peak = {s: min(r["peak_rss_kib"] for r in rows[s]) for s in sizes}
    return {"benchmark": "embed whole-process peak RSS", "command": "python benchmarks/bench_embed.py memory",
            "bundle": str(bundle.name), "runs": {str(k): v for k, v in rows.items()},
            "peak_rss_mib": {str(s): round(peak[s] / 1024, 1) for s in sizes},
            "ratio_36k_over_12k": round(peak[36000] / peak[12000], 3), "machine": machine()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["host", "memory", "child-host"])
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--workdir", default="/tmp/slidefuse-bench-embed")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--slide", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.what == "child-host":
        return child_host(a)
    Path(a.workdir).mkdir(parents=True, exist_ok=True)
    result = host(a) if a.what == "host" else memory(a)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"embed-{a.what}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
