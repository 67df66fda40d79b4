"""Time the output writers (mask.tif, mask.geojson, preview.png, report.json) on a real segmentation mask.

    .venv/bin/python benchmarks/bench_outputs.py --slide SLIDE --mask OUT/<slide>/mask.tif --model BUNDLE

``--mask`` is the mask.tif of an earlier ``slidefuse segment`` run of ``--slide`` with ``--model`` (at the
model's pixel size, i.e. without ``--mask-mpp``). Its full-resolution level is written back to a raw file, as
the stitcher leaves it, and ``write_outputs`` runs ``--repeats`` times into a temporary folder. Prints the
seconds of each run and saves ``benchmarks/results/outputs.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyvips

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from slidefuse.bench.machine import machine_info  # noqa: E402
from slidefuse.runtime.bundle import load_bundle  # noqa: E402
from slidefuse.runtime.outputs import ALL_FORMATS, OutputOptions, write_outputs  # noqa: E402
from slidefuse.runtime.segment import find_tissue  # noqa: E402
from slidefuse.runtime.slide import open_slide  # noqa: E402
from slidefuse.runtime.tissue import TissueParams  # noqa: E402
from slidefuse.runtime.types import MaskResult  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slide", type=Path, required=True, help="the slide the mask was made from")
    ap.add_argument("--mask", type=Path, required=True, help="its mask.tif (at the model's pixel size)")
    ap.add_argument("--model", type=Path, required=True, help="the bundle that made it")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "outputs.json")
    a = ap.parse_args(argv)
    bundle = load_bundle(a.model)
    mask = pyvips.Image.new_from_file(str(a.mask)).numpy()
    if mask.ndim == 3:
        mask = mask[..., 0]
    with open_slide(a.slide) as slide:
        thumb, tissue, _ = find_tissue(slide, TissueParams())
        info = slide.info
    counts = np.bincount(mask.ravel(), minlength=len(bundle.manifest.classes))
    seconds = []
    with tempfile.TemporaryDirectory(prefix="slidefuse-outputs-") as tmp:
        raw = Path(tmp) / "mask.raw"
        for i in range(a.repeats):
            mask.tofile(raw)
            result = MaskResult(raw, mask.shape[1], mask.shape[0], bundle.manifest.mpp, counts, tissue, thumb,
                                {"grid": 0, "tissue": 0, "run": 0}, {}, {"backend": "none (bench_outputs)"})
            t0 = time.perf_counter()
            write_outputs(result, info, bundle, Path(tmp) / "out", OutputOptions(formats=ALL_FORMATS))
            seconds.append(time.perf_counter() - t0)
            print(f"run {i + 1}/{a.repeats}: write_outputs {seconds[-1]:.2f} s", flush=True)
    doc = {"kind": "outputs", "command": "benchmarks/bench_outputs.py " + " ".join(argv or sys.argv[1:]),
           "mask": {"width": int(mask.shape[1]), "height": int(mask.shape[0]), "mpp": bundle.manifest.mpp},
           "formats": sorted(ALL_FORMATS), "seconds": seconds, "median_s": float(np.median(seconds)),
           "machine": machine_info()}
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"median {doc['median_s']:.2f} s for a {mask.shape[1]} x {mask.shape[0]} mask; saved {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
