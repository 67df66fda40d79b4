"""Region-read benchmark: pyvips crop vs Region.fetch vs ScaledView.read, tile sizes, threads, banded reads.

    python benchmarks/bench_read.py [--slide S.tif] [--reads 200] [--threads 1,2,4]

Without --slide it makes a 12k x 12k fully-covered slide from the real slides with make_slides.py (cached
under benchmarks/results/.cache). Writes benchmarks/results/read.json and prints a table. Reads are at
random positions over the slide, at its own pixel size (level 0, no resampling) and at 1.3x it (a resize
from level 0, the common case of a bundle mpp that is not a pyramid level).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _positions(view: Any, size: int, n: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    xs = rng.integers(0, max(1, view.width - size), n)
    ys = rng.integers(0, max(1, view.height - size), n)
    return [(int(x), int(y)) for x, y in zip(xs, ys, strict=True)]


def _time_reads(fn: Any, boxes: list[tuple[int, int]], size: int, threads: int) -> float:
    """Seconds per read for `fn(x, y, size)` over `boxes`, with `threads` threads."""
    fn(*boxes[0], size)  # warm up (opens the file, builds the pipeline)
    t0 = time.perf_counter()
    if threads == 1:
        for x, y in boxes:
            fn(x, y, size)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda b: fn(b[0], b[1], size), boxes))
    return (time.perf_counter() - t0) / len(boxes)


def bench(slide_path: Path, reads: int, sizes: list[int], threads: list[int]) -> dict[str, Any]:
    import pyvips

    from slidefuse.runtime.slide import open_slide

    rows: list[dict[str, Any]] = []
    with open_slide(slide_path) as slide:
        for factor in (1.0, 1.3):
            mpp = slide.info.mpp * factor
            view = slide.scaled(mpp)
            image = view.image

            def crop(x: int, y: int, s: int, image: Any = image) -> np.ndarray:
                return np.asarray(image.crop(x, y, s, s).numpy())

            def fetch_shared(x: int, y: int, s: int, image: Any = image) -> np.ndarray:
                # a fresh Region per read (no per-thread reuse)
                data = pyvips.Region.new(image).fetch(x, y, s, s)
                return np.frombuffer(data, np.uint8).reshape(s, s, 3)

            def read(x: int, y: int, s: int, view: Any = view) -> np.ndarray:
                return np.asarray(view.read(x, y, s, s))

            seed = 0
            for size in sizes:
                for method, fn in (("crop", crop), ("region-new", fetch_shared), ("view.read", read)):
                    for t in threads if method == "view.read" else [1]:
                        seed += 1  # fresh positions per cell: no help from libvips' caches of earlier cells
                        sec = _time_reads(fn, _positions(view, size, reads, seed), size, t)
                        rows.append({
                            "mpp": round(mpp, 4), "resampled": factor != 1.0, "tile": size, "method": method,
                            "threads": t, "ms_per_read": round(sec * 1e3, 3),
                            "mpix_per_s": round(size * size / sec / 1e6, 1),
                        })
                        print(f"{mpp:6.3f} um/px  tile {size:5d}  {method:<11} threads {t}: "
                              f"{sec * 1e3:8.2f} ms/read  {size * size / sec / 1e6:7.1f} Mpx/s", flush=True)
            # a band of overlapping 512 tiles (stride 448) read tile by tile vs as one band (read_many)
            def band(y: int, view: Any = view) -> list[tuple[int, int, int, int]]:
                return [(x, y, 512, 512) for x in range(0, min(view.width - 512, 16 * 448), 448)]

            view.read(0, 0, 64, 64)
            tiles, whole = band(view.height // 3), band(2 * view.height // 3)  # different rows: no shared cache
            t0 = time.perf_counter()
            for b in tiles:
                view.read(*b)
            per_tile = (time.perf_counter() - t0) / len(tiles)
            t0 = time.perf_counter()
            view.read_many(whole)
            per_tile_band = (time.perf_counter() - t0) / len(whole)
            for method, sec in (("tiles", per_tile), ("read_many-band", per_tile_band)):
                rows.append({"mpp": round(mpp, 4), "resampled": factor != 1.0, "tile": 512, "method": method,
                             "threads": 1, "ms_per_read": round(sec * 1e3, 3),
                             "mpix_per_s": round(512 * 512 / sec / 1e6, 1)})
                print(f"{mpp:6.3f} um/px  512 tiles stride 448  {method:<15}: {sec * 1e3:8.2f} ms/tile", flush=True)
        info = slide.info
    return {
        "slide": str(slide_path), "width": info.width, "height": info.height, "mpp": info.mpp,
        "loader": info.loader, "levels": len(info.levels), "reads_per_cell": reads,
        "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
        "libvips": f"{pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}", "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Region-read benchmark (crop vs Region.fetch, sizes, threads)")
    ap.add_argument("--slide", type=Path, default=None, help="slide to read (default: a made 12k slide)")
    ap.add_argument("--reads", type=int, default=200, help="reads per (size, method, threads) cell")
    ap.add_argument("--sizes", default="64,256,512,1024", help="square read sizes, px")
    ap.add_argument("--threads", default="1,2,4", help="thread counts for view.read")
    ap.add_argument("--out", type=Path, default=RESULTS / "read.json")
    a = ap.parse_args(argv)
    slide = a.slide
    if slide is None:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from make_slides import make_slide

        cache = RESULTS / ".cache"
        cache.mkdir(parents=True, exist_ok=True)
        slide = cache / "read_12k_full.tif"
        if not slide.exists():
            print(make_slide(slide, 12000, 1.0))
    result = bench(slide, a.reads, [int(s) for s in a.sizes.split(",")], [int(t) for t in a.threads.split(",")])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
