"""Make large pyramidal JPEG TIFF slides from the real slides (benchmarks/slides.py finds them), for scale benchmarks.

    python benchmarks/make_slides.py --size 36000 --tissue-fraction 0.1 --out /tmp/slide36k.tif

The slide is a grid of square cells. A chosen fraction of the cells holds real tissue (windows of the real
slides that are almost all tissue, found with slidefuse's own tissue detector, varied by flips and
rotations), the rest is glass (a flat light grey). With ``--layout blob`` (default) the tissue cells form one
compact region around the centre, as on a real slide, so the tiles that touch tissue scale with the fraction;
``scatter`` places them at random. ``--tissue-fraction 1`` covers the whole slide.

Everything is one lazy libvips pipeline (crops -> arrayjoin -> tiffsave): nothing is materialised in Python
memory, so a 100k x 100k slide costs disk, not RAM. Decoding the result costs what a real slide costs because
its tiles are real H&E texture compressed with JPEG.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
GLASS = 245  # grey level of the glass cells


def tissue_windows(cell: int, min_tissue: float = 0.95) -> list:  # list[pyvips.Image]
    """``cell`` x ``cell`` RGB crops (lazy pyvips images at about 0.5 um/px) of the real slides that are at
    least ``min_tissue`` tissue, with their flips and rotations."""
    import pyvips

    from benchmarks.slides import require_slide
    from slidefuse.runtime.slide import open_slide
    from slidefuse.runtime.tissue import TissueParams, detect_tissue

    sources = [("CMU-1-Small-Region.svs", None), ("TCGA-CR-7395-01A-01-TS1.svs", 0.5)]
    windows: list[pyvips.Image] = []
    for name, mpp in sources:
        path = require_slide(name)  # every source, or the benchmark slides would silently differ
        with open_slide(path, mpp=mpp) as slide:
            view = slide.scaled(slide.info.mpp)  # level 0, RGB, alpha flattened
            thumb_mpp = slide.thumbnail_mpp(1024)
            mask = detect_tissue(slide.thumbnail(1024), TissueParams(), thumb_mpp)
            f = slide.info.mpp / thumb_mpp  # thumb px per level-0 px
            step = cell // 2
            for y in range(0, view.height - cell + 1, step):
                for x in range(0, view.width - cell + 1, step):
                    t = mask[int(y * f) : int((y + cell) * f) + 1, int(x * f) : int((x + cell) * f) + 1]
                    if t.size and t.mean() >= min_tissue:
                        windows.append(view.image.crop(x, y, cell, cell))
    if not windows:
        raise SystemExit(f"no real tissue windows of {cell} px found in {[n for n, _ in sources]}")
    variants = []
    for w in windows:
        variants += [w, w.fliphor(), w.flipver(), w.rot90(), w.rot270()]
    return variants


def choose_cells(n_x: int, n_y: int, fraction: float, layout: str, seed: int) -> np.ndarray:
    """bool [n_y, n_x]: which cells hold tissue (round(fraction * cells) of them)."""
    rng = np.random.default_rng(seed)
    n = n_x * n_y
    k = min(n, max(0, round(fraction * n)))
    if layout == "scatter":
        order = rng.permutation(n)
    else:  # blob: nearest to the centre first, with a little jitter for a ragged edge
        yy, xx = np.mgrid[0:n_y, 0:n_x]
        d = np.hypot((xx + 0.5) / n_x - 0.5, (yy + 0.5) / n_y - 0.5) + rng.uniform(0, 0.03, (n_y, n_x))
        order = np.argsort(d.ravel(), kind="stable")
    chosen = np.zeros(n, dtype=bool)
    chosen[order[:k]] = True
    return chosen.reshape(n_y, n_x)


def make_slide(
    out: Path, size: int, fraction: float, mpp: float = 0.5, cell: int = 1024, layout: str = "blob",
    seed: int = 0, quality: int = 85, tile: int = 256, height: int | None = None,
) -> dict:
    """Write the slide to ``out`` (atomically) and return a summary dict."""
    import pyvips

    width, height = size, height or size
    n_x, n_y = math.ceil(width / cell), math.ceil(height / cell)
    cells = choose_cells(n_x, n_y, fraction, layout, seed)
    windows = tissue_windows(cell)
    rng = np.random.default_rng(seed + 1)
    glass = (pyvips.Image.black(cell, cell, bands=3) + GLASS).cast("uchar").copy(interpretation="srgb")
    images = [windows[int(rng.integers(len(windows)))] if c else glass for c in cells.ravel()]
    mosaic = pyvips.Image.arrayjoin(images, across=n_x).crop(0, 0, width, height)
    tmp = out.with_name(out.name + ".tmp.tif")
    t0 = time.perf_counter()
    mosaic.tiffsave(
        str(tmp), tile=True, tile_width=tile, tile_height=tile, pyramid=True, compression="jpeg", Q=quality,
        bigtiff=True, xres=1000.0 / mpp, yres=1000.0 / mpp, resunit="cm",
    )
    os.replace(tmp, out)
    cell_w = np.minimum(cell, width - np.arange(n_x) * cell)  # px of each cell column inside the crop
    cell_h = np.minimum(cell, height - np.arange(n_y) * cell)
    area = np.outer(cell_h, cell_w).astype(np.float64)
    return {
        "out": str(out), "width": width, "height": height, "mpp": mpp, "cell": cell, "layout": layout,
        "tissue_fraction_requested": fraction, "tissue_cells": int(cells.sum()), "cells": int(cells.size),
        "tissue_fraction": round(float((area * cells).sum() / area.sum()), 4), "source_windows": len(windows),
        "seconds": round(time.perf_counter() - t0, 2), "bytes": out.stat().st_size,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, required=True, help="width (and height, unless --height) in px")
    ap.add_argument("--height", type=int, default=None, help="height in px (default: --size)")
    ap.add_argument("--tissue-fraction", type=float, default=0.3, help="fraction of cells with tissue, 0..1")
    ap.add_argument("--out", type=Path, required=True, help="output .tif")
    ap.add_argument("--mpp", type=float, default=0.5, help="pixel size written in the resolution tags (um/px)")
    ap.add_argument("--cell", type=int, default=1024, help="cell side in px")
    ap.add_argument("--layout", choices=("blob", "scatter"), default="blob")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quality", type=int, default=85, help="JPEG quality")
    ap.add_argument("--tile", type=int, default=256, help="TIFF tile side in px")
    a = ap.parse_args(argv)
    if not 0.0 <= a.tissue_fraction <= 1.0:
        ap.error(f"--tissue-fraction must be in 0..1, got {a.tissue_fraction}")
    if a.size < 1 or a.cell < 64:
        ap.error("--size must be >= 1 and --cell >= 64")
    summary = make_slide(a.out, a.size, a.tissue_fraction, a.mpp, a.cell, a.layout, a.seed, a.quality, a.tile, a.height)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
