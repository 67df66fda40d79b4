#!/usr/bin/env python3
"""Data recipe of the demonstration model: pseudo-labelled tiles from the real H&E slides in ../shared/data.

    .venv/bin/python tools/make_pseudolabel_tiles.py --out build/default-model/tiles [--mpp 2.0 --tile 128]

Slides used: CMU-1-Small-Region.svs (H&E, 0.499 um/px) and TCGA-CR-7395-01A-01-TS1.svs (H&E frozen section,
JPEG 2000; its file has NO pixel size: 0.5 um/px is ASSUMED, as for a 20x Aperio scan, and recorded as an
assumption in dataset.json). OS-2-vsi.ome.tif is not used: it is a Ki67 IHC stain (haematoxylin + DAB, no
eosin), so the H&E colour deconvolution does not apply to it.

Labels (slidefuse.train.pseudolabels): 0 background (outside the runtime's tissue detector's outline, and glass
gaps inside it), 1 haematoxylin-dense, 2 eosin-dominant (Ruifrok-Johnston colour deconvolution, smoothed
haematoxylin thresholded inside the tissue).
Derived images: each slide read at 0.8x, 1x and 1.25x the target pixel size (scale jitter), random crops with
random flips / 90-degree rotations; validation crops from the bottom 20 % of each slide, never seen in training.
Output layout: that of `slidefuse train --tiles` (see `slidefuse train --help`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from slidefuse.train.tileset import SlideSource, TileSetParams, make_pseudolabel_dataset  # noqa: E402

SLIDES = REPO.parent / "shared" / "data" / "slides"
TCGA_ASSUMED_MPP = 0.5  # the TCGA file carries no pixel size; 20x Aperio scans are about 0.5 um/px


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="dataset folder to create (must not exist or be empty)")
    ap.add_argument("--slides-dir", type=Path, default=SLIDES, help="folder with the real slides [%(default)s]")
    ap.add_argument("--mpp", type=float, default=2.0, help="tile pixel size in um/px [%(default)s]")
    ap.add_argument("--tile", type=int, default=128, help="tile side in px [%(default)s]")
    ap.add_argument("--train-per-slide", type=int, default=150, help="training tiles per slide [%(default)s]")
    ap.add_argument("--val-per-slide", type=int, default=16, help="validation tiles per slide [%(default)s]")
    ap.add_argument("--seed", type=int, default=0, help="seed of the crops [%(default)s]")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("pyvips").setLevel(logging.WARNING)
    sources = [
        SlideSource(args.slides_dir / "CMU-1-Small-Region.svs"),
        SlideSource(args.slides_dir / "TCGA-CR-7395-01A-01-TS1.svs", mpp=TCGA_ASSUMED_MPP),
    ]
    missing = [str(s.path) for s in sources if not s.path.exists()]
    if missing:
        print(f"make_pseudolabel_tiles: missing slides: {', '.join(missing)}; pass --slides-dir", file=sys.stderr)
        return 2
    params = TileSetParams(mpp=args.mpp, tile=args.tile, train_per_slide=args.train_per_slide,
                           val_per_slide=args.val_per_slide, seed=args.seed)
    summary = make_pseudolabel_dataset(sources, args.out, params)
    print(json.dumps({k: summary[k] for k in ("tiles", "class_fractions", "mpp", "tile")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
