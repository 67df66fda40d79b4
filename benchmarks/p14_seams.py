"""Seam effect of the two patch-14 tile geometries on a real slide region, with trained decoders.

    .venv/bin/python benchmarks/p14_seams.py [--work build/p14-seams] [--epochs 10]

One frozen tiny patch-14 encoder (tiny-p14-reg, random weights made once at 224 px) and, for each geometry, a
decoder trained with `slidefuse train` on pseudo-labelled tiles of the real H&E slides
(slidefuse.train.tileset, as tools/make_pseudolabel_tiles.py): "paper" on 512 px tiles (36 x 36 grid over
504 px, output resized) and "aligned" on 518 px tiles (37 x 37 grid, exact). Each model then segments a
1036 x 1036 region of CMU-1-Small-Region.svs at 0.5 um/px twice: stitched (the runtime's overlapping tile grid,
blend window and stitcher, 64 px overlap) and whole-region (the same weights run once over the region with a
74 x 74 grid that covers it exactly). The figure is the fraction of pixels whose class differs. Prints it and
saves benchmarks/results/p14-seams.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.slides import require_slide  # noqa: E402
from slidefuse.model.checkpoints import save_state  # noqa: E402
from slidefuse.model.registry import get_spec  # noqa: E402
from slidefuse.runtime.grid import TileGrid  # noqa: E402
from slidefuse.runtime.pipeline import PipelineOptions, run_pipeline  # noqa: E402
from slidefuse.runtime.slide import InMemorySlide, open_slide  # noqa: E402
from slidefuse.runtime.stitch import Stitcher  # noqa: E402
from slidefuse.train.tileset import SlideSource, TileSetParams, make_pseudolabel_dataset  # noqa: E402

ENCODER = "tiny-p14-reg"
CLASSES = "background,haematoxylin,eosin"
GEOMETRIES = {"paper": 512, "aligned": 518}
MPP = 0.5  # um/px of tiles and region (the slide's own scan resolution)
REGION_XY = (600, 900)  # top-left of the region at MPP, in tissue


class TorchRunner:
    """What the pipeline runs (a Runner's run) over a SegmentationModel: uint8 [B, T, T, 3] -> float32 [B, C, T, T]."""

    def __init__(self, model: object) -> None:
        self.model = model

    def run(self, tiles: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model(torch.from_numpy(np.ascontiguousarray(tiles))).numpy()  # type: ignore[operator]


def make_encoder(path: Path) -> Path:
    """The frozen tiny encoder shared by both geometries: random, seeded, made at its native 224 px."""
    import torch

    spec = get_spec(ENCODER)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return save_state(spec.builder(spec, spec.native_size), path)


def train_decoder(work: Path, tile: int, encoder: Path, epochs: int, per_slide: int) -> Path:
    """Pseudo-labelled tiles of `tile` px, then `slidefuse train` on them; returns the decoder checkpoint."""
    tiles = work / f"tiles-{tile}"
    if not (tiles / "dataset.json").exists():
        sources = [SlideSource(require_slide("CMU-1-Small-Region.svs")),
                   SlideSource(require_slide("TCGA-CR-7395-01A-01-TS1.svs"), mpp=0.5)]
        make_pseudolabel_dataset(sources, tiles, TileSetParams(mpp=MPP, tile=tile, train_per_slide=per_slide,
                                                               val_per_slide=4, seed=0))
    out = work / f"decoder-{tile}.safetensors"
    cmd = [str(REPO / ".venv" / "bin" / "slidefuse"), "-q", "train", "--encoder", ENCODER, "--encoder-weights",
           str(encoder), "--tiles", str(tiles), "--classes", CLASSES, "--out", str(out), "--epochs", str(epochs),
           "--val-every", str(epochs), "--restart-every", str(epochs), "--tile", str(tile), "--cache-features",
           "--batch", "4", "--lr", "1e-3", "--device", "cpu"]
    subprocess.run(cmd, check=True)
    return out


def segment(encoder: Path, decoder: Path, tile: int, region: np.ndarray, overlap: int, raw: Path) -> dict[str, float]:
    """Stitched and whole-region class maps of `region` (uint8 [R, R, 3]); their disagreement."""
    import torch

    from slidefuse.model.assembly import build_model

    size = region.shape[0]
    model = build_model(ENCODER, 3, tile_size=tile, encoder_weights=encoder, decoder_weights=decoder)
    view = InMemorySlide(region, MPP).scaled(MPP)
    grid = TileGrid(view.width, view.height, tile, overlap, margin=overlap)
    with Stitcher(grid, 3, raw) as st:
        run_pipeline(view, grid, list(grid.tiles()), TorchRunner(model), st, PipelineOptions(batch_size=2, workers=1))
        st.finish()
    stitched = np.fromfile(raw, dtype=np.uint8).reshape(size, size)
    whole_model = build_model(ENCODER, 3, tile_size=size, encoder_weights=encoder, decoder_weights=decoder)
    with torch.no_grad():
        whole = whole_model(torch.from_numpy(region[None].copy()))[0].argmax(0).numpy()
    inner = (slice(overlap, -overlap),) * 2
    return {"differ": float((stitched != whole).mean()),
            "differ_inner": float((stitched[inner] != whole[inner]).mean()),
            "classes_whole": [float((whole == c).mean()) for c in range(3)]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=REPO / "build" / "p14-seams")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--train-per-slide", type=int, default=24)
    ap.add_argument("--region", type=int, default=1036, help="region side in px at 0.5 um/px (a multiple of 14)")
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "p14-seams.json")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    encoder = make_encoder(args.work / "encoder.safetensors")
    with open_slide(require_slide("CMU-1-Small-Region.svs")) as slide:
        region = slide.scaled(MPP).read(*REGION_XY, args.region, args.region)
    rows = {}
    for name, tile in GEOMETRIES.items():
        t0 = time.perf_counter()
        decoder = train_decoder(args.work, tile, encoder, args.epochs, args.train_per_slide)
        rows[name] = {"tile": tile, **segment(encoder, decoder, tile, region, args.overlap,
                                              args.work / f"mask-{tile}.raw"),
                      "seconds": round(time.perf_counter() - t0, 1)}
        print(f"{name:8s} tile {tile}: {rows[name]['differ']:.4%} of pixels differ from whole-region inference "
              f"({rows[name]['differ_inner']:.4%} away from the region's border)", flush=True)
    result = {"encoder": ENCODER, "mpp": MPP, "region": [*REGION_XY, args.region, args.region],
              "overlap": args.overlap, "epochs": args.epochs, "geometries": rows,
              "command": "benchmarks/p14_seams.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
