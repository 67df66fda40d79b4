"""Colour conversion cost: the lazy libvips JFIF recombination vs decoding with another decoder.

    python benchmarks/bench_colour.py [--size 4096] [--reads 200] [--repeats 3]

Makes a SIZE x SIZE JPEG TIFF whose tiles are JFIF YCbCr under an RGB tag (the Bio-Formats trap) from the
real CMU slide (tests/runtime/colour_fixtures.py), then times 512 px tile reads at random positions:
- `raw`: libvips tiffload with no conversion (the false colours: the floor of what any fix can cost);
- `slidefuse`: ScaledView.read through the colour pipeline (tiffload + lazy recomb, what ships);
- `tifffile`: tifffile + imagecodecs decoding the tiles under each read box (the other decoder option).
Writes benchmarks/results/colour.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))

from benchmarks.slides import find_slide  # noqa: E402

CMU = find_slide("CMU-1-Small-Region.svs")


def _make(size: int, path: Path) -> Path:
    import pyvips

    from tests.runtime import colour_fixtures as fx

    src = pyvips.Image.openslideload(str(CMU)).numpy()[:, :, :3]
    reps = (size // src.shape[0] + 1, size // src.shape[1] + 1, 1)
    big = np.tile(src, reps)[:size, :size].copy()
    return fx.ycbcr_tagged_rgb(big, path)


def _tifffile_reader(path: Path) -> Any:
    import imagecodecs
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        page = tif.pages[0]
        offsets, counts = page.dataoffsets, page.databytecounts
    fh = open(path, "rb")
    tw, th = page.tilewidth, page.tilelength
    cols = -(-page.imagewidth // tw)

    def read(x: int, y: int, size: int) -> np.ndarray:
        out = np.empty((size, size, 3), np.uint8)
        for ty in range(y // th, (y + size - 1) // th + 1):
            for tx in range(x // tw, (x + size - 1) // tw + 1):
                i = ty * cols + tx
                fh.seek(offsets[i])
                tile = imagecodecs.jpeg8_decode(fh.read(counts[i]))  # JFIF: libjpeg converts YCbCr itself
                x0, y0 = max(x, tx * tw), max(y, ty * th)
                x1, y1 = min(x + size, (tx + 1) * tw), min(y + size, (ty + 1) * th)
                out[y0 - y : y1 - y, x0 - x : x1 - x] = tile[y0 - ty * th : y1 - ty * th, x0 - tx * tw : x1 - tx * tw]
        return out

    return read


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--reads", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tile", type=int, default=512)
    args = ap.parse_args()
    import pyvips

    from slidefuse.runtime.slide import open_slide

    cache = RESULTS / ".cache"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"ycbcr-tagged-rgb-{args.size}.tif"
    if not path.exists():
        _make(args.size, path)
    slide = open_slide(path)
    view = slide.scaled(slide.info.mpp)
    raw_region = pyvips.Region.new(pyvips.Image.tiffload(str(path)))

    def raw(x: int, y: int, s: int) -> np.ndarray:
        return np.frombuffer(raw_region.fetch(x, y, s, s), np.uint8).reshape(s, s, 3)

    readers = {"raw": raw, "slidefuse": lambda x, y, s: view.read(x, y, s, s), "tifffile": _tifffile_reader(path)}
    rng = np.random.default_rng(0)
    boxes = [(int(rng.integers(0, args.size - args.tile)), int(rng.integers(0, args.size - args.tile)))
             for _ in range(args.reads)]
    ref = readers["tifffile"](*boxes[0], args.tile).astype(int)
    agree = {k: float(np.abs(f(*boxes[0], args.tile).astype(int) - ref).mean()) for k, f in readers.items()}
    ms: dict[str, list[float]] = {k: [] for k in readers}
    for _ in range(args.repeats):  # interleaved, so load drift hits every reader alike
        for name, fn in readers.items():
            t0 = time.perf_counter()
            for x, y in boxes:
                fn(x, y, args.tile)
            ms[name].append((time.perf_counter() - t0) * 1000 / len(boxes))
    rows = [{"reader": k, "ms_per_read_median": float(np.median(v)), "ms_per_read_all": v,
             "mean_abs_diff_vs_tifffile": agree[k]} for k, v in ms.items()]
    out = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "slide": f"{args.size} px JFIF-in-RGB TIFF",
           "tile": args.tile, "reads": args.reads, "threads": 1, "machine": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "load": os.getloadavg(), "rows": rows}
    (RESULTS / "colour.json").write_text(json.dumps(out, indent=2))
    print(f"{'reader':<10} {'ms/read':>8} {'mean|diff| vs tifffile':>24}")
    for r in rows:
        print(f"{r['reader']:<10} {r['ms_per_read_median']:8.2f} {r['mean_abs_diff_vs_tifffile']:24.3f}")


if __name__ == "__main__":
    main()
