"""Peak host memory of `segment` versus slide size: does the runtime stay flat as slides grow?

    .venv/bin/python benchmarks/bench_memory.py                       # 12k vs 36k, 30% tissue
    .venv/bin/python benchmarks/bench_memory.py --sizes 12000,36000 --tissue-fraction 0.3 --model-mpp 1.0
    .venv/bin/python benchmarks/bench_memory.py --as-user --tissue-fraction 0.1 --sizes 12000,16000,24000,36000
    .venv/bin/python benchmarks/bench_memory.py --as-user --formats tiff,geojson,preview,probs --json memory-probs.json

For each size, a pyramidal JPEG TIFF made of real H&E windows (``benchmarks/make_slides.py``, same tissue
fraction and layout) is segmented end to end (``segment_many``: thumbnail + tissue, tiles, pipeline, stitching
to disk, outputs) in a fresh subprocess, which reports its own peak RSS (``ru_maxrss``) and, after resetting
the kernel's mark once the tiles are planned, the peak of the streaming part alone (``VmHWM``). The model is a
pure-ONNX colour classifier bundle (``tests/runtime/onnx_models.py``), so the figures measure the runtime, not
a network. Target (issue 5): the 36k slide's peak within 25% of the 12k one's. Results:
``benchmarks/results/memory.json``. Slides are cached in ``--workdir`` between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _paths() -> None:
    for p in (REPO, REPO / "tests", REPO / "benchmarks"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))


def make_or_reuse_slide(workdir: Path, size: int, fraction: float, mpp: float = 0.5) -> tuple[Path, dict[str, Any]]:
    """A size x size pyramidal JPEG TIFF with `fraction` tissue (blob layout), cached in `workdir`."""
    _paths()
    from make_slides import make_slide  # benchmarks/make_slides.py

    path = workdir / f"slide_{size}_{int(round(fraction * 100))}pct.tif"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return path, json.loads(meta.read_text())
    print(f"making {path} ({size} x {size}, {fraction:.0%} tissue) ...", flush=True)
    summary = make_slide(path, size, fraction, mpp=mpp)
    meta.write_text(json.dumps(summary, indent=2))
    return path, summary


def make_or_reuse_bundle(workdir: Path, tile: int, mpp: float, overlap: int, depth: int = 0) -> Path:
    """The colour-classifier test bundle (pure ONNX, blur radius 1, `depth` extra 3x3 conv layers for a
    realistic per-tile cost) at `mpp`, cached in `workdir`."""
    _paths()
    from runtime.onnx_models import make_bundle  # tests/runtime/onnx_models.py

    folder = workdir / f"bundle_t{tile}_o{overlap}_mpp{mpp:g}_d{depth}"
    if not (folder / "manifest.json").exists():
        make_bundle(folder, tile_size=tile, mpp=mpp, overlap=overlap, blur_radius=1, depth=depth)
    return folder


def rss_kib() -> dict[str, int]:
    """Current (VmRSS) and peak (VmHWM) resident set size of this process, KiB (Linux /proc)."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def child_main(args: argparse.Namespace) -> int:
    """Segment one slide in this (fresh) process and print one JSON line with timings and memory."""
    _paths()
    from slidefuse.runtime.bundle import load_bundle
    from slidefuse.runtime.segment import SegmentOptions, segment_many

    bundle = load_bundle(args.bundle)
    options = SegmentOptions(
        backend="ort-cpu", backend_options={"threads": args.threads}, batch_size=args.batch, workers=args.workers,
        formats=frozenset((args.formats or "tiff,report").split(",")), overwrite=True, all_tiles=args.all_tiles,
    )
    from slidefuse.runtime.progress import Progress

    class StreamingPeak(Progress):
        """Resets the kernel's peak-RSS mark once the tiles are planned (after thumbnail + tissue), so the
        figure read at the end is the peak of the streaming part (pipeline, stitching, outputs) alone."""

        def __init__(self) -> None:
            self.reset = False
            self.at_reset: dict[str, int] = {}

        def update(self, done_tiles: int, total_tiles: int) -> None:
            if done_tiles == 0 and not self.reset:
                self.at_reset = rss_kib()
                try:
                    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
                    self.reset = True
                except OSError:
                    pass

    before = rss_kib()
    peak_progress = StreamingPeak()
    t0 = time.perf_counter()
    (res,) = segment_many([Path(args.slide)], bundle, Path(args.out), options, progress=peak_progress)
    wall = time.perf_counter() - t0
    after = rss_kib()
    if res.status != "ok":
        print(json.dumps({"error": res.error}))
        return 1
    report = json.loads((res.out_dir / "report.json").read_text()) if res.out_dir else {}
    print(json.dumps({
        "wall_s": round(wall, 2),
        "tiles": res.tile_counts,
        "timings": {k: round(v, 3) for k, v in res.timings.items()},
        "mask": report.get("mask"),
        "stitcher_bytes": report.get("extra", {}).get("stitcher_bytes"),
        "rss_before_kib": before.get("VmRSS"),
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,  # whole run, incl. tissue
        "rss_after_tissue_kib": peak_progress.at_reset.get("VmRSS"),
        "peak_rss_streaming_kib": after.get("VmHWM") if peak_progress.reset else None,  # pipeline + outputs
    }))
    return 0


def run_child(slide: Path, bundle: Path, out: Path, a: argparse.Namespace, all_tiles: bool = False) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--slide", str(slide), "--bundle", str(bundle),
           "--out", str(out), "--threads", str(a.threads), "--workers", str(a.workers), "--batch", str(a.batch),
           "--formats", a.formats or "tiff,report"] + (["--all-tiles"] if all_tiles else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"child failed ({proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def run_cli(slide: Path, bundle: Path, out: Path, a: argparse.Namespace) -> dict[str, Any]:
    """`slidefuse segment SLIDE --model BUNDLE --out OUT` as a user runs it (default options; default formats
    unless --formats is given), in a child process whose peak RSS the kernel reports to `wait4`: the whole
    process, imports to outputs."""
    cmd = [sys.executable, "-c", "from slidefuse.cli import main; main()", "-q", "segment", str(slide),
           "--model", str(bundle), "--out", str(out), "--overwrite"] + (["--formats", a.formats] if a.formats else [])
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"slidefuse segment failed: {err[-2000:]}")
    report = json.loads(next(out.glob("*/report.json")).read_text())
    return {"wall_s": round(wall, 2), "peak_rss_kib": usage.ru_maxrss, "command": " ".join(cmd[3:]),
            "tiles": report.get("tiles"), "outputs": sorted(report.get("outputs", {}))}


def machine() -> dict[str, Any]:
    _paths()
    from slidefuse.bench.machine import cpu_isa, cpu_model, isa_summary

    return {"cpu": cpu_model(), "cpu_isa_summary": isa_summary(cpu_isa()), "cpus": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "platform": platform.platform()}


def common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model-mpp", type=float, default=1.0, help="bundle pixel size, um/px (slides are 0.5)")
    ap.add_argument("--tile", type=int, default=256, help="model tile side, px")
    ap.add_argument("--overlap", type=int, default=32, help="tile overlap, px")
    ap.add_argument("--model-depth", type=int, default=0,
                    help="extra 3x3 conv layers (16 channels) in the test model, for a realistic per-tile cost")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    ap.add_argument("--workers", type=int, default=2, help="reader threads")
    ap.add_argument("--batch", type=int, default=8, help="tiles per engine call")
    ap.add_argument("--formats", default=None,
                    help="outputs written per slide [tiff,report; with --as-user: segment's defaults]")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/slidefuse-bench"), help="cache for slides/bundles")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="12000,36000", help="slide sides in px, comma-separated")
    ap.add_argument("--tissue-fraction", type=float, default=0.3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--slide", help=argparse.SUPPRESS)
    ap.add_argument("--bundle", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--all-tiles", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--as-user", action="store_true",
                    help="measure `slidefuse segment` itself (default formats and options), whole process")
    ap.add_argument("--model", type=Path, default=None,
                    help="a bundle to run instead of the test model (e.g. a real encoder's); --model-* are ignored")
    ap.add_argument("--json", default=None, help="results file name in benchmarks/results/ [memory(-segment).json]")
    common_args(ap)
    a = ap.parse_args(argv)
    if a.child:
        return child_main(a)

    a.workdir.mkdir(parents=True, exist_ok=True)
    bundle = a.model or make_or_reuse_bundle(a.workdir, a.tile, a.model_mpp, a.overlap, a.model_depth)
    rows = []
    for size in [int(s) for s in a.sizes.split(",")]:
        slide, meta = make_or_reuse_slide(a.workdir, size, a.tissue_fraction)
        print(f"segmenting {slide.name} ...", flush=True)
        if a.as_user:
            r = run_cli(slide, bundle, a.workdir / f"cli_out_{size}", a)
            r.update({"size": size, "slide": meta})
            rows.append(r)
            print(f"  {size} x {size}: whole-process peak RSS {r['peak_rss_kib'] / 1024:.0f} MiB, {r['wall_s']} s",
                  flush=True)
            continue
        r = run_child(slide, bundle, a.workdir / f"out_{size}", a)
        r.update({"size": size, "slide": meta})
        rows.append(r)
        streaming = r.get("peak_rss_streaming_kib")
        print(f"  {size} x {size}: peak RSS {r['peak_rss_kib'] / 1024:.0f} MiB (after imports "
              f"{r['rss_before_kib'] / 1024:.0f} MiB; streaming part "
              f"{(streaming or 0) / 1024:.0f} MiB), {r['tiles']['run']} tiles, {r['wall_s']} s", flush=True)
    base, big = rows[0], rows[-1]
    ratio = big["peak_rss_kib"] / base["peak_rss_kib"]
    limit = 1.10 if a.as_user else 1.25  # whole `slidefuse segment` process / the runtime's own part
    streaming_ratio = (big["peak_rss_streaming_kib"] / base["peak_rss_streaming_kib"]
                       if big.get("peak_rss_streaming_kib") and base.get("peak_rss_streaming_kib") else None)
    doc = {
        "kind": "memory",
        "command": "benchmarks/bench_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "target": (f"peak RSS of the largest slide within {round((limit - 1) * 100)}% of the smallest "
                   f"(ratio <= {limit})" + (", whole `slidefuse segment` process" if a.as_user else "")),
        "peak_rss_ratio": round(ratio, 3),
        # every size, not only the ends: the GeoJSON grid is the mask itself up to its pixel cap, so a mid-sized
        # slide can have the largest grid
        "peak_rss_max_over_min": round(max(r["peak_rss_kib"] for r in rows) / min(r["peak_rss_kib"] for r in rows), 3),
        "peak_rss_streaming_ratio": None if streaming_ratio is None else round(streaming_ratio, 3),
        "pass": ratio <= limit,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()
                     if k not in ("child", "slide", "bundle", "out", "all_tiles")},
        "machine": machine(),
        "note": "2 CPU cores shared with other jobs while measured; memory figures are unaffected, times are noisy",
        "runs": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / (a.json or ("memory-segment.json" if a.as_user else "memory.json"))).write_text(
        json.dumps(doc, indent=2) + "\n")
    if streaming_ratio is not None:
        print(f"streaming-part peak RSS ratio: {streaming_ratio:.3f}")
    print(f"peak RSS ratio {big['size']} / {base['size']}: {ratio:.3f} (target <= {limit}: "
          f"{'PASS' if ratio <= limit else 'FAIL'}); largest / smallest peak over all sizes: "
          f"{doc['peak_rss_max_over_min']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
