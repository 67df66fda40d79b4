#!/usr/bin/env python3
"""Cut the real tiles shipped in slidefuse/data/parity_tiles/ (the parity checks' default tiles). Run once:

    .venv/bin/python tools/make_parity_tiles.py --slides-dir ../shared/data/slides

Slides: the OpenSlide project's freely distributable test slides CMU-1-Small-Region.svs (H&E, 0.499 um/px) and
OS-2-vsi.ome.tif (Ki67 IHC: haematoxylin + DAB, 0.346 um/px), from
https://openslide.cs.cmu.edu/download/openslide-testdata/. Each slide is opened with `open_slide`, and
`slidefuse.export.parity.reader_tiles` chooses the tiles exactly as it does for a user's `--parity-slides`:
tissue on a thumbnail, a tile grid at `--mpp`, the most tissue-covered tiles spread over the slide. Writes one
PNG per tile and index.json, nothing else (the README.md beside them is kept by hand).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OUT = REPO / "slidefuse" / "data" / "parity_tiles"
SLIDES = (  # (file, short name, stain, tiles to cut)
    ("CMU-1-Small-Region.svs", "cmu-1", "H&E", 2),
    ("OS-2-vsi.ome.tif", "os-2", "Ki67 IHC (haematoxylin + DAB)", 2),
)


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    from slidefuse.export.parity import reader_tiles
    from slidefuse.runtime.slide import open_slide

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slides-dir", type=Path, required=True, help="folder with the OpenSlide test slides")
    ap.add_argument("--mpp", type=float, default=0.5, help="pixel size of the tiles in um/px [%(default)s]")
    ap.add_argument("--tile", type=int, default=384, help="tile side in px [%(default)s]")
    args = ap.parse_args(argv)

    OUT.mkdir(parents=True, exist_ok=True)
    entries = []
    for file, short, stain, n in SLIDES:
        path = args.slides_dir / file
        with open_slide(path) as reader:
            tiles = reader_tiles(reader, file, args.tile, args.mpp, n)
        for i, (tile, source) in enumerate(zip(tiles.tiles, tiles.sources, strict=True)):
            name = f"{short}-{i}.png"
            Image.fromarray(tile).save(OUT / name, optimize=True)
            x, y = source.split("=")[1].split(",")
            entries.append({"file": name, "mpp": args.mpp, "slide": file, "stain": stain,
                            "model_xy": [int(x), int(y)], "size": args.tile})
            print(f"{name}: {source} at {args.mpp} um/px, {(OUT / name).stat().st_size // 1024} KiB")
    (OUT / "index.json").write_text(json.dumps({"tiles": entries}, indent=2) + "\n")
    total = sum((OUT / e["file"]).stat().st_size for e in entries)
    print(f"{len(entries)} tiles, {total / 1e6:.2f} MB in {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
