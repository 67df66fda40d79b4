"""mask.zarr writing: time and peak memory against mask.tif on a large synthetic class mask.

    python benchmarks/bench_zarr.py [--size 16000] [--workdir /tmp/sfbench]

Writes a SIZE x SIZE uint8 class mask (blobs of 3 classes) as the stitcher's raw file, then writes mask.tif and
mask.zarr from it in turn, each in a fresh process (so peak RSS is the writer's own), and checks that the zarr's
levels equal the TIFF's. Writes benchmarks/results/zarr.json (with the command line and load average) and
prints a table.
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
sys.path.insert(0, str(REPO))

CLASSES = [("background", (0, 0, 0)), ("tumour", (220, 40, 40)), ("stroma", (40, 110, 220))]


def _make_raw(size: int, raw: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    band = 1024
    with open(raw, "wb") as f:
        xx = np.arange(size, dtype=np.float32)
        for y0 in range(0, size, band):
            yy = np.arange(y0, min(size, y0 + band), dtype=np.float32)[:, None]
            f1 = np.sin(xx / (size / 9.3)) * np.cos(yy / (size / 7.1))
            m = np.zeros((len(yy), size), np.uint8)
            m[f1 > 0.2] = 1
            m[(np.sin(xx / 311.0 + yy / 173.0) > 0.6) & (f1 > -0.3)] = 2
            m[rng.random(m.shape) < 0.001] = 0
            m.tofile(f)


def _write_one(fmt: str, raw: Path, size: int, out: Path) -> dict[str, Any]:
    """In this process: write one format from the raw mask; seconds and peak RSS."""
    import numpy as np

    from slidefuse.runtime.bundle import ClassInfo
    from slidefuse.runtime.outputs.mask_tiff import write_mask_tiff
    from slidefuse.runtime.outputs.zarr import write_mask_zarr
    from slidefuse.runtime.types import LevelInfo, MaskResult, SlideInfo

    result = MaskResult(raw, size, size, 1.0, np.zeros(3, np.int64), np.zeros((8, 8), bool),
                        np.zeros((8, 8, 3), np.uint8), {}, {}, {})
    slide = SlideInfo(Path("synthetic"), size * 2, size * 2, 0.5, "user", "tiff", "tiffload",
                      (LevelInfo(size * 2, size * 2, 1.0),))
    classes = tuple(ClassInfo(n, c) for n, c in CLASSES)
    t0 = time.perf_counter()
    if fmt == "tiff":
        write_mask_tiff(result, slide, out / "mask.tif", num_classes=3)
    else:
        write_mask_zarr(result, "synthetic", classes, out / "mask.zarr")
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # includes the mapped raw mask's pages
    return {"format": fmt, "seconds": seconds, "peak_rss_mib": peak}


def _check(out: Path) -> bool:
    import numpy as np
    import tifffile
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    levels = next(iter(Reader(parse_url(str(out / "mask.zarr")))())).data
    with tifffile.TiffFile(out / "mask.tif") as tif:
        return len(levels) == len(tif.pages) and all(
            np.array_equal(np.asarray(z), p.asarray()) for z, p in zip(levels, tif.pages, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=16000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/sfbench"))
    ap.add_argument("--one", choices=["tiff", "zarr"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = args.workdir / f"zarr-{args.size}"
    raw = work / "mask.raw"
    if args.one:
        print(json.dumps(_write_one(args.one, raw, args.size, work)))
        return
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    _make_raw(args.size, raw)
    rows = []
    for fmt in ("tiff", "zarr"):
        run = subprocess.run([sys.executable, __file__, "--size", str(args.size), "--workdir", str(args.workdir),
                              "--one", fmt], capture_output=True, text=True, check=True)
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
    equal = _check(work)
    result = {"command": " ".join(["python", "benchmarks/bench_zarr.py", *sys.argv[1:]]), "size": args.size,
              "mask_mib": args.size * args.size / 2**20, "rows": rows, "levels_equal": equal,
              "load_before": load_before, "load_after": os.getloadavg(),
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "note": "peak RSS counts the pages of the memory-mapped raw mask that were read (file-backed)"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "zarr.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.size} x {args.size} mask ({result['mask_mib']:.0f} MiB); zarr levels equal mask.tif's: {equal}")
    for r in rows:
        print(f"  {r['format']:5s} {r['seconds']:7.2f} s  peak RSS {r['peak_rss_mib']:7.1f} MiB")
    print(f"  load 1/5/15 min before {load_before}, after {result['load_after']}")


if __name__ == "__main__":
    main()
