#!/usr/bin/env python3
"""Rebuild the committed demonstration bundle `slidefuse/data/default/`, end to end, in one command:

    .venv/bin/python tools/make_default_model.py    # minutes on a free 2-core CPU (the README has the measured time)

Stages (each printed as the command it runs):
1. data:   tools/make_pseudolabel_tiles.py  -> build/default-model/tiles  (pseudo-labels from the real H&E slides)
2. train:  slidefuse train --encoder tiny-p8 --random-encoder --train-encoder ...
           The tiny encoder has no pretrained weights, so encoder AND decoder are trained from a random start
           (--train-encoder). That is NOT the paper's frozen-encoder protocol; it is what a demo without
           downloadable weights can do. Everything else follows the protocol (CE + Dice, NAdam, cosine warm
           restarts, affine + colour augmentation, best-by-validation-Dice checkpoint), with a larger peak lr
           (1e-3) because the encoder starts from scratch.
3. export: slidefuse export tiny-p8 --encoder-weights CKPT.encoder.safetensors --decoder-weights CKPT ...
           into slidefuse/data/default (parity gate included); then `demo: true` is set in the manifest
           (`slidefuse export` has no option for it) and training.json + README.md are added to the bundle.
4. check:  the bundle segments CMU-1-Small-Region through the runtime (onnxruntime CPU, every tile run) and
           its tissue is compared with an Otsu tissue mask of the thumbnail; figures -> build/default-model/
           figures.json, preview -> build/default-model/preview.png.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from slidefuse.train.demo import DEFAULT_BUNDLE, DEMO_NOTE, check_on_slide, copy_preview, mark_demo  # noqa: E402
from slidefuse.train.pseudolabels import PSEUDO_CLASSES, PSEUDO_COLORS  # noqa: E402

ENCODER = "tiny-p8"
SLIDES = REPO.parent / "shared" / "data" / "slides"


def run(cmd: list[str]) -> None:
    print("+ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(REPO))
    except ValueError:
        return str(p)


def training_record(sidecar: Path, dataset: Path, train_seconds: float, recipe: str) -> str:
    """training.json for the bundle: the checkpoint sidecar without machine-specific paths, plus the data."""
    side = json.loads(sidecar.read_text())
    side["config"] = {k: (rel(Path(v)) if k in ("tiles", "out", "encoder_weights") and v else v)
                      for k, v in side["config"].items()}
    side.pop("export_command", None)
    side["encoder_weights"]["file"] = None
    side["dataset"] = json.loads(dataset.read_text())
    side["train_seconds_wall"] = round(train_seconds, 1)
    side["recipe"] = recipe
    side["note"] = DEMO_NOTE
    return json.dumps(side, indent=2) + "\n"


def readme(mpp: float, tile: int, recipe: str) -> str:
    return f"""# slidefuse demonstration bundle

{DEMO_NOTE}

- encoder `{ENCODER}` (a test-size ViT/8, width 64, depth 2) + the shared decoder, tile {tile} px at {mpp:g} um/px
- classes: {", ".join(PSEUDO_CLASSES)}
- trained encoder AND decoder from a random start (`slidefuse train --train-encoder`; not the paper's frozen-encoder
  protocol, because no pretrained weights exist for this encoder) on pseudo-labels: background = outside the tissue
  detector's outline plus glass gaps inside it, haematoxylin-dense vs eosin-dominant = Ruifrok-Johnston colour
  deconvolution (smoothed haematoxylin channel, thresholded inside the tissue)
- training data: CMU-1-Small-Region.svs and TCGA-CR-7395-01A-01-TS1.svs (0.5 um/px assumed: the file has none),
  crops with scale jitter, flips and rotations; see training.json for the history and the data summary
- rebuild: `{recipe}`
"""


def publish(bundle: Path, out: Path) -> None:
    """Replace `out` with a copy of `bundle` (atomically, modes 0755 / 0644)."""
    from slidefuse.atomic import atomic_folder
    from slidefuse.export.bundle_writer import publish_modes

    with atomic_folder(out) as stage:
        shutil.copytree(bundle, stage, dirs_exist_ok=True)
        publish_modes(stage)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / "build" / "default-model", help="scratch folder [%(default)s]")
    ap.add_argument("--out", type=Path, default=DEFAULT_BUNDLE, help="bundle folder [%(default)s]")
    ap.add_argument("--mpp", type=float, default=2.0, help="model pixel size, um/px [%(default)s]")
    ap.add_argument("--tile", type=int, default=128, help="tile side, px [%(default)s]")
    ap.add_argument("--epochs", type=int, default=20, help="training epochs [%(default)s]")
    ap.add_argument("--decoder-width", type=int, default=16, help="decoder width D [%(default)s]")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate [%(default)s]")
    ap.add_argument("--train-per-slide", type=int, default=150, help="training tiles per slide [%(default)s]")
    ap.add_argument("--seed", type=int, default=0, help="seed of data, init and training [%(default)s]")
    ap.add_argument("--reuse-tiles", action="store_true", help="keep an existing WORK/tiles")
    ap.add_argument("--skip-check", action="store_true", help="do not run the CMU check at the end")
    ap.add_argument("--upgrade-manifest", action="store_true",
                    help="only re-seal the existing bundle's manifest at the current format (files unchanged)")
    args = ap.parse_args(argv)
    if args.upgrade_manifest:
        from slidefuse.runtime.bundle import upgrade_manifest

        manifest = upgrade_manifest(args.out)
        print(f"{args.out}: manifest at format {manifest.format_version}, {len(manifest.files)} files verified")
        return 0
    py = sys.executable
    recipe = "python tools/make_default_model.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    work, out = args.work, args.out
    tiles, ckpt = work / "tiles", work / "ckpt" / "demo.safetensors"
    classes = ",".join(PSEUDO_CLASSES)
    colors = ",".join(f"#{r:02x}{g:02x}{b:02x}" for r, g, b in PSEUDO_COLORS)

    if not (args.reuse_tiles and (tiles / "dataset.json").exists()):
        shutil.rmtree(tiles, ignore_errors=True)
        run([py, "tools/make_pseudolabel_tiles.py", "--out", str(tiles), "--slides-dir", str(SLIDES),
             "--mpp", str(args.mpp), "--tile", str(args.tile), "--train-per-slide", str(args.train_per_slide),
             "--seed", str(args.seed)])
    t0 = time.perf_counter()
    run([py, "-m", "slidefuse", "train", "--encoder", ENCODER, "--random-encoder", "--train-encoder",
         "--tiles", str(tiles), "--classes", classes, "--out", str(ckpt), "--tile", str(args.tile),
         "--epochs", str(args.epochs), "--restart-every", "10", "--val-every", "5", "--batch", "8",
         "--lr", str(args.lr), "--decoder-width", str(args.decoder_width), "--seed", str(args.seed)])
    train_seconds = time.perf_counter() - t0
    enc = ckpt.with_name(ckpt.stem + ".encoder.safetensors")
    run([py, "-m", "slidefuse", "export", ENCODER, "--encoder-weights", str(enc), "--decoder-weights", str(ckpt),
         "--decoder-width", str(json.loads(ckpt.with_suffix(".json").read_text())["decoder_width"]),
         "--classes", classes, "--colors", colors, "--mpp", str(args.mpp), "--tile", str(args.tile),
         "--out", str(work / "bundle"), "--force"])  # export refuses the package's data folder: copied below
    mark_demo(work / "bundle", {"training.json": training_record(ckpt.with_suffix(".json"), tiles / "dataset.json",
                                                                 train_seconds, recipe),
                                "README.md": readme(args.mpp, args.tile, recipe)})
    publish(work / "bundle", out)
    size_mb = sum(p.stat().st_size for p in out.rglob('*') if p.is_file()) / 1e6
    print(f"demonstration bundle {rel(out)} ({size_mb:.1f} MB),"
          f" trained in {train_seconds:.0f} s")
    if args.skip_check:
        return 0
    figures = check_on_slide(out, SLIDES / "CMU-1-Small-Region.svs", work / "check")
    figures["train_seconds"] = round(train_seconds, 1)
    figures["best"] = json.loads(ckpt.with_suffix(".json").read_text())["best"]
    (work / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    copy_preview(figures, work / "preview.png")
    print(json.dumps({k: figures[k] for k in ("agreement", "model_tissue_fraction", "otsu_tissue_fraction",
                                              "tissue_class_fractions", "seconds", "train_seconds", "best")},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
