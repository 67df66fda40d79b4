"""Regions of interest in the stitcher: the exact band-wise polygon fill (`roi_raster.PolygonRaster`) against a
coarse raster upsampled band by band (`keep.CoarseKeep`), on the model frame of a large slide.

    .venv/bin/python benchmarks/bench_roi.py                       # 12000 x 10000 model px, bands of 448 rows
    .venv/bin/python benchmarks/bench_roi.py --width 20000 --height 16000 --repeats 3

The regions are QuPath-like annotations: three freehand outlines of a few hundred vertices, one with a hole.
Each variant produces every band of the keep mask (as the stitcher asks for it); the variants are interleaved
in each repeat (the machine may be loaded) and the fastest repeat is kept. Accuracy: model pixels that differ
from the exact fill (pixel centres inside the polygons), as a fraction of the regions' pixels. The exact fill sets
each inside span of a band on its own up to `LOOP_SPANS` spans, else makes one toggle-and-xor pass over the band
(e.g. a region made of many mask pixels); "exact, xor pass" forces the second. Also timed: the
per-region class counts from a raw mask (`SlideRegions.count`). Results: ``benchmarks/results/roi_keep.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"


def annotations(width: int, height: int, seed: int = 0) -> list[Any]:
    """Three freehand-like outlines (level 0 = model frame here), one with a hole."""
    import shapely

    rng = np.random.default_rng(seed)
    out = []
    for cx, cy, r in ((0.3, 0.35, 0.2), (0.7, 0.6, 0.25), (0.85, 0.15, 0.08)):
        angles = np.linspace(0, 2 * np.pi, 400, endpoint=False)
        radius = r * min(width, height) * (1 + 0.15 * np.sin(5 * angles) + 0.03 * rng.standard_normal(400))
        out.append(shapely.Polygon(np.c_[cx * width + radius * np.cos(angles), cy * height + radius * np.sin(angles)]))
    out[1] = out[1].difference(shapely.Point(0.7 * width, 0.6 * height).buffer(0.08 * min(width, height)))
    return [shapely.make_valid(g) for g in out]


def coarse_mask(geom: Any, width: int, height: int, factor: int) -> Any:
    """A CoarseKeep of `geom` rasterised (exactly, by pixel centre) at `factor` model px per coarse px."""
    from slidefuse.runtime.keep import CoarseKeep
    from slidefuse.runtime.roi_raster import PolygonRaster

    cw, ch = -(-width // factor), -(-height // factor)
    mask = PolygonRaster(geom, (1 / factor, 1 / factor)).rows(0, ch, cw)
    return CoarseKeep(mask, float(factor))


class XorPass:
    """The exact fill forced onto its toggle-and-xor pass (what a band with more than LOOP_SPANS spans takes)."""

    def __init__(self, raster: Any) -> None:
        self.raster = raster

    def rows(self, y0: int, y1: int, width: int) -> Any:
        import slidefuse.runtime.roi_raster as roi_raster

        kept, roi_raster.LOOP_SPANS = roi_raster.LOOP_SPANS, -1
        try:
            return self.raster.rows(y0, y1, width)
        finally:
            roi_raster.LOOP_SPANS = kept


def sweep(keep: Any, width: int, height: int, band: int, exact: Any | None) -> tuple[float, int, int]:
    """(seconds for every band, pixels kept, pixels differing from `exact`)."""
    t0, kept, differ, spent = time.perf_counter(), 0, 0, 0.0
    for y0 in range(0, height, band):
        y1 = min(y0 + band, height)
        t = time.perf_counter()
        rows = keep.rows(y0, y1, width)
        spent += time.perf_counter() - t
        kept += int(rows.sum())
        if exact is not None:
            differ += int(np.count_nonzero(rows != exact.rows(y0, y1, width)))
    del t0
    return spent, kept, differ


def main(argv: list[str] | None = None) -> int:
    from slidefuse.bench.machine import cpu_isa, cpu_model, isa_summary
    from slidefuse.runtime.roi import Region, RoiFile
    from slidefuse.runtime.roi_raster import PolygonRaster, SlideRegions

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=12000, help="model frame width, px")
    ap.add_argument("--height", type=int, default=10000, help="model frame height, px")
    ap.add_argument("--band", type=int, default=448, help="rows per stitcher band (a tile's stride)")
    ap.add_argument("--factors", default="4,16,64", help="model px per coarse px of the CoarseKeep variants")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args(argv)
    import shapely

    w, h = a.width, a.height
    geoms = annotations(w, h)
    union = shapely.union_all(geoms)
    exact = PolygonRaster(union, (1.0, 1.0))
    variants: dict[str, Any] = {"exact (PolygonRaster)": exact, "exact, xor pass": XorPass(exact)}
    for f in (int(x) for x in a.factors.split(",")):
        variants[f"CoarseKeep 1/{f}"] = coarse_mask(union, w, h, f)
    best: dict[str, dict[str, Any]] = {}
    for _ in range(a.repeats):
        for name, keep in variants.items():  # interleaved
            seconds, kept, differ = sweep(keep, w, h, a.band, None if keep is exact else exact)
            row = best.setdefault(name, {"seconds": seconds, "kept": kept, "differ": differ})
            row["seconds"] = min(row["seconds"], seconds)
    area = best["exact (PolygonRaster)"]["kept"]
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "mask.raw"
        rng = np.random.default_rng(1)
        with open(raw, "wb") as f:
            for y0 in range(0, h, a.band):
                f.write(rng.integers(0, 3, (min(a.band, h - y0), w), dtype=np.uint8).tobytes())
        regions = tuple(Region(i, f"r{i}", g) for i, g in enumerate(geoms))
        source = RoiFile(Path("bench.geojson"), "geojson", regions, "0" * 64)
        placed = SlideRegions(source, regions, (w, h), (w, h), (0.0, 0.0))
        t0 = time.perf_counter()
        placed.count(raw, 3)
        count_s = time.perf_counter() - t0
    mpx = w * h / 1e6
    isa = isa_summary(cpu_isa())
    doc = {"cpu": cpu_model(), "isa": isa, "model_frame": [w, h], "band_rows": a.band, "region_pixels": area,
           "variants": {k: {**v, "ms_per_mpx": 1000 * v["seconds"] / mpx, "differ_fraction": v["differ"] / area}
                        for k, v in best.items()},
           "count_seconds": count_s, "count_ms_per_mpx": 1000 * count_s / mpx, "regions": len(geoms)}
    print(f"CPU: {doc['cpu']} [{isa}]; model frame {w} x {h} px ({mpx:.0f} Mpx), bands of {a.band} rows, "
          f"regions {area / 1e6:.1f} Mpx")
    for name, v in doc["variants"].items():
        print(f"  {name:24s} {v['seconds']:7.2f} s  {v['ms_per_mpx']:6.2f} ms/Mpx  differ {v['differ']:>10,} px "
              f"({100 * v['differ_fraction']:.3f}% of the regions)")
    print(f"  per-region counts from the raw mask: {count_s:.2f} s ({doc['count_ms_per_mpx']:.2f} ms/Mpx)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "roi_keep.json").write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
