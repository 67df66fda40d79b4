"""Does the argmax of probs.ome.tif equal mask.tif? Counted over segmented output folders, band by band.

    .venv/bin/python benchmarks/probs_agreement.py OUT/<slide> [OUT/<slide> ...] [--json probs-agreement.json]
    .venv/bin/python benchmarks/probs_agreement.py --real      # segment the three real slides first (test bundle)

For each folder: probs.ome.tif's planes (read with tifffile, an independent reader, one band of rows at a time)
and mask.tif's full-resolution level. Tissue pixels are those with some probability > 0 (a tile ran there and no
keep mask dropped them); a tie is a pixel whose top uint8 value is shared by two classes (rounding can make a
tie where the float sums had none). Reported: agreement on tissue pixels without a tie (the target: >= 99.9%),
the share of ties, and tissue pixels counted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
BAND = 1024  # rows read at a time


def agreement(folder: Path) -> dict[str, Any]:
    import tifffile
    import zarr

    with tifffile.TiffFile(folder / "probs.ome.tif") as ptif, tifffile.TiffFile(folder / "mask.tif") as mtif:
        probs = zarr.open(ptif.series[0].aszarr(level=0), mode="r")  # [C, H, W], decoded tile by tile
        mask = zarr.open(mtif.pages[0].aszarr(), mode="r")
        _, h, w = probs.shape
        agree = judged = ties = tissue = 0
        for y in range(0, h, BAND):
            p = np.asarray(probs[:, y : y + BAND, :])
            m = np.asarray(mask[y : y + BAND, :])
            top = p.max(axis=0)
            covered = top > 0
            tie = ((p == top).sum(axis=0) > 1) & covered
            ok = covered & ~tie
            agree += int((np.argmax(p, axis=0) == m)[ok].sum())
            judged += int(ok.sum())
            ties += int(tie.sum())
            tissue += int(covered.sum())
    return {"folder": str(folder), "size": [w, h], "tissue_px": tissue, "judged_px": judged,
            "agreement": agree / judged if judged else None, "tie_share": ties / tissue if tissue else None}


def segment_real(out: Path) -> list[Path]:
    from click.testing import CliRunner
    from runtime.onnx_models import make_bundle

    from benchmarks.slides import require_slide
    from slidefuse.cli import cli

    bundle = out / "bundle"
    make_bundle(bundle, tile_size=128, mpp=1.0, overlap=32)
    for name in ("CMU-1-Small-Region.svs", "TCGA-CR-7395-01A-01-TS1.svs", "OS-2-vsi.ome.tif"):
        res = CliRunner().invoke(cli, ["segment", str(require_slide(name)), "--model", str(bundle), "--out",
                                       str(out / "out"), "--formats", "tiff,probs", "--mpp", "0.5"])
        if res.exit_code != 0:
            raise SystemExit(res.output)
    return sorted(p.parent for p in (out / "out").glob("*/report.json"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="*", type=Path)
    ap.add_argument("--real", action="store_true", help="segment the three real slides (colour test bundle)")
    ap.add_argument("--json", default=None, help="results file name in benchmarks/results/")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = [*a.folders, *(segment_real(Path(tmp)) if a.real else [])]
        for folder in folders:
            r = agreement(folder)
            rows.append(r)
            print(f"{folder.name}: {r['size'][0]} x {r['size'][1]}, tissue {r['tissue_px']} px, argmax == mask on "
                  f"{100 * r['agreement']:.4f}% of tissue pixels without a tie (ties {100 * r['tie_share']:.3f}%)",
                  flush=True)
    if a.json:
        doc = {"command": "python benchmarks/probs_agreement.py " + " ".join(sys.argv[1:]), "target": ">= 0.999",
               "pass": all(r["agreement"] is not None and r["agreement"] >= 0.999 for r in rows), "rows": rows}
        (REPO / "benchmarks" / "results" / a.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
