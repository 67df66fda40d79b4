"""slidefuse's QC maps beside HistoQC's masks on the test slides of `benchmarks/qc_slides.py`.

HistoQC runs in its own environment (it is not a slidefuse dependency); this script only reads the PNG masks it
wrote: ``<slide>_pen_markings.png`` (ClassificationModule, pen), ``<slide>_blurry.png`` (BlurDetectionModule)
and ``<slide>_dark.png`` (LightDarkModule's dark tissue, HistoQC's fold proxy). Each is resized (nearest) to the
slidefuse thumbnail, and both tools are scored against the drawn ground truth at that scale:

- ink: recall and precision against the drawn strokes;
- blur: share of the blurred rectangle's tissue flagged, share of the tissue outside it flagged;
- folds: share of the doubled tissue flagged, share of the tissue outside the strip flagged.

Writes benchmarks/results/qc_histoqc.json and benchmarks/results/qc/histoqc-<slide>.png (thumbnail | truth |
HistoQC | slidefuse).

    python benchmarks/qc_histoqc.py --histoqc OUT_CMU OUT_TCGA --slides .cache/qc_slides
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.qc_measure import _open, _ratio, _thumb, _truth  # noqa: E402
from benchmarks.qc_slides import SOURCES  # noqa: E402
from benchmarks.slides import require_slide  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
HISTOQC_MASK = {"ink": "pen_markings", "blur": "blurry", "fold": "dark"}
OURS = {"ink": "ink", "blur": "blur", "fold": "folds"}


def histoqc_mask(folders: list[Path], slide_name: str, kind: str, shape: tuple[int, int]) -> np.ndarray | None:
    from PIL import Image

    for folder in folders:
        path = folder / slide_name / f"{slide_name}_{HISTOQC_MASK[kind]}.png"
        if path.is_file():
            with Image.open(path) as img:
                return np.asarray(img.convert("L").resize((shape[1], shape[0]), Image.Resampling.NEAREST)) > 127
    return None


def ours(path: Path, key: str, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thumbnail, tissue, slidefuse's map) for one test slide."""
    from slidefuse.runtime.qc.base import QCInput
    from slidefuse.runtime.qc.methods import METHODS

    thumb, tissue, mpp = _thumb(path, key)
    slide = _open(path, key)
    try:
        return thumb, tissue, METHODS[OURS[kind]].run(QCInput(thumb, tissue, mpp, slide, None, 2.0)).mask
    finally:
        slide.close()


def score(kind: str, found: np.ndarray, truth: np.ndarray, tissue: np.ndarray, clean_tissue: np.ndarray,
          shift: int) -> dict[str, float | None]:
    if kind == "ink":
        return {"recall": _ratio(found, truth), "precision": _ratio(truth, found)}
    if kind == "blur":
        return {"region_tissue_flagged": _ratio(found, truth & tissue),
                "tissue_outside_flagged": _ratio(found, tissue & ~truth)}
    doubled = truth & clean_tissue & np.roll(clean_tissue, -shift, axis=1)
    return {"doubled_tissue_flagged": _ratio(found, doubled), "tissue_outside_flagged": _ratio(found, tissue & ~truth)}


def picture(thumb: np.ndarray, masks: list[np.ndarray | None], path: Path) -> None:
    from PIL import Image

    panels = [thumb]
    for mask in masks:
        shown = thumb.copy()
        if mask is not None:
            shown[mask] = (0.5 * shown[mask] + [127, 0, 0]).astype(np.uint8)
        else:
            shown[:] = 128
        panels.append(shown)
    row = np.concatenate([np.pad(p, ((0, 0), (0, 8), (0, 0)), constant_values=255) for p in panels], axis=1)
    img = Image.fromarray(row)
    img.thumbnail((800, 800))
    img.quantize(256).save(path, optimize=True)  # a palette PNG: small


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--histoqc", type=Path, nargs="+", required=True, help="HistoQC output folders")
    ap.add_argument("--slides", type=Path, default=REPO / ".cache" / "qc_slides")
    args = ap.parse_args()
    made_all = json.loads((args.slides / "index.json").read_text())
    (RESULTS / "qc").mkdir(parents=True, exist_ok=True)
    table: dict[str, Any] = {}
    for key, made in made_all.items():
        _, clean_tissue, mpp = _thumb(require_slide(SOURCES[key][0]), key)
        for kind in ("ink", "blur", "fold"):
            path = Path(made[kind]["slide"])
            thumb, tissue, mine = ours(path, key, kind)
            truth = _truth(made[kind]["truth"], thumb.shape)
            theirs = histoqc_mask(args.histoqc, path.name, kind, tissue.shape)
            shift = int(round(300 / mpp))
            row = {"slidefuse": score(kind, mine, truth, tissue, clean_tissue, shift),
                   "histoqc": None if theirs is None else score(kind, theirs, truth, tissue, clean_tissue, shift)}
            table[path.name] = row
            picture(thumb, [truth, theirs, mine], RESULTS / "qc" / f"histoqc-{path.stem}.png")
            print(path.name, json.dumps(row), flush=True)
    (RESULTS / "qc_histoqc.json").write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
