"""Quality control measured on the test slides of `benchmarks/qc_slides.py` (ground truth = the pixels drawn).

Writes benchmarks/results/qc.json and small PNGs (benchmarks/results/qc/: thumbnail | ink | folds | blur per
slide). Parts (each a function below):

- ink: recall and precision of the ink map against the drawn strokes (all, over glass, over tissue), at the
  thumbnail's scale; clean tissue flagged as ink on the unmodified slides;
- blur: cells inside the blurred rectangle flagged, cells outside it flagged;
- folds: doubled tissue flagged, tissue outside the strip flagged, and on the clean slides;
- stain: each slide's estimate against the demonstration model's H&E;
- areas: the demonstration model's class areas (default policy) on the copy inked on the glass and on the
  copy inked across the tissue, against the clean slide's (the latter over the pixels no stroke was drawn on);
- cost: segment wall time and CPU time (all threads) with qc "off" and "default", interleaved, `--repeats` times
  each; the QC stage's own time as report.json records it (timings.qc).

    python benchmarks/qc_slides.py --out .cache/qc_slides
    python benchmarks/qc_measure.py --slides .cache/qc_slides
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.qc_slides import SOURCES  # noqa: E402
from benchmarks.slides import require_slide  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
MODEL = REPO / "slidefuse" / "data" / "default"


def _open(path: Path, key: str) -> Any:
    from slidefuse.runtime.slide import open_slide

    return open_slide(path, default_mpp=SOURCES[key][1])


def _thumb(path: Path, key: str) -> tuple[np.ndarray, np.ndarray, float]:
    from slidefuse.runtime.tissue import detect_tissue

    slide = _open(path, key)
    try:
        mpp = float(slide.thumbnail_mpp(2048))
        thumb = slide.thumbnail(2048)
        return thumb, detect_tissue(thumb, thumb_mpp=mpp), mpp
    finally:
        slide.close()


def _truth(path: str, shape: tuple[int, ...]) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.BOX)) > 127


def _ratio(a: np.ndarray, b: np.ndarray) -> float | None:
    n = int(b.sum())
    return round(float((a & b).sum()) / n, 4) if n else None


def ink(key: str, made: dict[str, Any]) -> dict[str, Any]:
    from slidefuse.runtime.qc.ink import detect_ink

    thumb, _, mpp = _thumb(Path(made["ink"]["slide"]), key)
    truth = _truth(made["ink"]["truth"], thumb.shape)
    found = detect_ink(thumb, mpp)
    clean, clean_tissue, _ = _thumb(require_slide(SOURCES[key][0]), key)
    glass = ~clean_tissue  # where the clean slide has no tissue
    return {"thumb_mpp": mpp, "recall": _ratio(found, truth), "precision": _ratio(truth, found),
            "recall_on_glass": _ratio(found, truth & glass), "recall_on_tissue": _ratio(found, truth & ~glass),
            "clean_tissue_flagged": _ratio(detect_ink(clean, mpp), clean_tissue)}


def _cells(qc_map: Any, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inside, outside, flagged) per assessed cell."""
    c = int(round(qc_map.details["cell_um"] / qc_map.mpp))
    inside, outside, flagged = [], [], []
    for r in range(0, truth.shape[0], c):
        for col in range(0, truth.shape[1], c):
            score = qc_map.score[r:r + c, col:col + c]
            if np.isfinite(score).any():
                inside.append(truth[r:r + c, col:col + c].all())
                outside.append(not truth[r:r + c, col:col + c].any())
                flagged.append(bool(qc_map.mask[r:r + c, col:col + c].any()))
    return np.asarray(inside, bool), np.asarray(outside, bool), np.asarray(flagged, bool)


def blur(key: str, made: dict[str, Any], model_mpp: float) -> dict[str, Any]:
    from slidefuse.runtime.qc.base import QCInput
    from slidefuse.runtime.qc.blur import BlurDetector

    out: dict[str, Any] = {}
    for label, path in (("blurred", Path(made["blur"]["slide"])), ("clean", require_slide(SOURCES[key][0]))):
        thumb, tissue, mpp = _thumb(path, key)
        slide = _open(path, key)
        try:
            qc_map = BlurDetector().run(QCInput(thumb, tissue, mpp, slide, None, model_mpp))
        finally:
            slide.close()
        truth = _truth(made["blur"]["truth"], thumb.shape) if label == "blurred" else np.zeros(tissue.shape, bool)
        inside, outside, flagged = _cells(qc_map, truth)
        out[label] = {"cells_in_region": int(inside.sum()), "in_region_flagged": _ratio(flagged, inside),
                      "cells_outside": int(outside.sum()), "outside_flagged": _ratio(flagged, outside),
                      "median_focus": qc_map.details["median_focus"], "threshold": qc_map.details["threshold"]}
    return out


def folds(key: str, made: dict[str, Any]) -> dict[str, Any]:
    from slidefuse.runtime.qc.fold import detect_folds

    thumb, tissue, mpp = _thumb(Path(made["fold"]["slide"]), key)
    strip = _truth(made["fold"]["truth"], thumb.shape)
    _, clean_tissue, _ = _thumb(require_slide(SOURCES[key][0]), key)
    shift = int(round(300 / mpp))  # the strip is doubled with the tissue 300 um to its right
    doubled = strip & clean_tissue & np.roll(clean_tissue, -shift, axis=1)
    found, _ = detect_folds(thumb, tissue, mpp)
    clean, _, _ = _thumb(require_slide(SOURCES[key][0]), key)
    clean_found, _ = detect_folds(clean, clean_tissue, mpp)
    return {"doubled_tissue_flagged": _ratio(found, doubled), "tissue_outside_strip_flagged":
            _ratio(found, tissue & ~strip), "clean_tissue_flagged": _ratio(clean_found, clean_tissue)}


def stain(key: str) -> dict[str, Any]:
    from slidefuse.runtime.qc.stain import estimate_stain

    thumb, tissue, _ = _thumb(require_slide(SOURCES[key][0]), key)
    est = estimate_stain(thumb, tissue)
    return {**est.to_dict(), "flagged_against_H&E": not est.matches("H&E")}


def _areas(res: Any) -> dict[str, float]:
    return {k: float(v) for k, v in res.class_areas_mm2.items()}


def _diff(a: dict[str, float], b: dict[str, float]) -> dict[str, float | None]:
    return {k: (round((a[k] - b[k]) / b[k], 4) if b[k] else None) for k in b if k != "background"}


def _mask_counts(res: Any, keep: np.ndarray | None) -> dict[str, float]:
    """Class areas (mm²) of mask.tif over the pixels `keep` (level-0 truth resized to the mask) leaves."""
    arr = np.asarray(res.mask_array())
    mm2 = (res.mpp[0] / 1000) * (res.mpp[1] / 1000)
    if keep is not None:
        arr = arr[keep]
    counts = np.bincount(arr.ravel(), minlength=3)
    return {name: float(counts[i]) * mm2 for i, name in enumerate(("background", "haematoxylin-dense",
                                                                    "eosin-dominant"))}


def areas(made: dict[str, Any], out: Path) -> dict[str, Any]:
    from PIL import Image

    from slidefuse.api import load_model

    with load_model(MODEL) as model:
        clean = model.segment(require_slide(SOURCES["cmu"][0]), out=out / "clean", overwrite=True)
        glass = model.segment(Path(made["inkglass"]["slide"]), out=out / "inkglass", overwrite=True)
        inked = model.segment(Path(made["ink"]["slide"]), out=out / "ink", overwrite=True)
    with load_model(MODEL, qc="off") as model:
        inked_off = model.segment(Path(made["ink"]["slide"]), out=out / "ink-off", overwrite=True)
    h, w = np.asarray(clean.mask_array()).shape
    with Image.open(made["ink"]["truth"]) as img:
        not_drawn = np.asarray(img.resize((w, h), Image.Resampling.BOX)) == 0
    c, g = _areas(clean), _areas(glass)
    return {"clean_mm2": c, "inked_on_glass_mm2": g, "inked_on_glass_vs_clean": _diff(g, c),
            "tiles": {"clean": clean.report["tile_counts"], "inked_on_glass": glass.report["tile_counts"],
                      "inked_across_qc_off": inked_off.report["tile_counts"]},
            "inked_across_outside_drawn_vs_clean": _diff(_mask_counts(inked, not_drawn),
                                                         _mask_counts(clean, not_drawn)),
            "inked_across_qc_off_vs_clean": _diff(_areas(inked_off), c)}


def cost(repeats: int, out: Path) -> dict[str, Any]:
    """Wall time of `Model.segment` per slide with qc off and default, interleaved (same process, same model)."""
    from slidefuse.api import load_model

    slides = {"cmu": require_slide(SOURCES["cmu"][0]), "tcga": require_slide(SOURCES["tcga"][0])}
    times: dict[str, dict[str, list[float]]] = {k: {"off": [], "default": []} for k in slides}
    cpu: dict[str, dict[str, list[float]]] = {k: {"off": [], "default": []} for k in slides}
    qc_s: dict[str, list[float]] = {k: [] for k in slides}
    with load_model(MODEL, qc="off") as off, load_model(MODEL) as on:
        for _ in range(repeats):
            for key, path in slides.items():
                for mode, model in (("off", off), ("default", on)):
                    t0, c0 = time.perf_counter(), time.process_time()
                    res = model.segment(path, out=out / mode, overwrite=True, mpp=SOURCES[key][1])
                    times[key][mode].append(time.perf_counter() - t0)
                    cpu[key][mode].append(time.process_time() - c0)  # every thread of this process
                    if mode == "default":
                        qc_s[key].append(float(res.report["timings"]["qc"]))
    summary = {}
    for key, t in times.items():
        off_s, on_s = statistics.median(t["off"]), statistics.median(t["default"])
        cpu_off, cpu_on = statistics.median(cpu[key]["off"]), statistics.median(cpu[key]["default"])
        summary[key] = {"off_s": t["off"], "default_s": t["default"], "median_off_s": off_s,
                        "median_default_s": on_s, "added": round(on_s / off_s - 1, 4),
                        "cpu_off_s": cpu[key]["off"], "cpu_default_s": cpu[key]["default"],
                        "cpu_added": round(cpu_on / cpu_off - 1, 4),
                        "qc_stage_s": qc_s[key], "qc_stage_share": round(statistics.median(qc_s[key]) / on_s, 4)}
    return summary


def pictures(made_all: dict[str, Any], folder: Path) -> None:
    """thumbnail | ink | folds | blur per test slide (each map in red over the thumbnail), 800 px wide at most."""
    from PIL import Image

    from slidefuse.runtime.qc.base import QCInput
    from slidefuse.runtime.qc.methods import METHODS

    folder.mkdir(parents=True, exist_ok=True)
    for key, made in made_all.items():
        for kind in ("ink", "blur", "fold"):
            path = Path(made[kind]["slide"])
            thumb, tissue, mpp = _thumb(path, key)
            slide = _open(path, key)
            try:
                q = QCInput(thumb, tissue, mpp, slide, None, 2.0)
                panels = [thumb]
                for name in ("ink", "folds", "blur"):
                    shown = thumb.copy()
                    mask = METHODS[name].run(q).mask
                    shown[mask] = (0.5 * shown[mask] + [127, 0, 0]).astype(np.uint8)
                    panels.append(shown)
            finally:
                slide.close()
            row = np.concatenate([np.pad(p, ((0, 0), (0, 8), (0, 0)), constant_values=255) for p in panels], axis=1)
            img = Image.fromarray(row)
            img.thumbnail((800, 800))
            img.quantize(256).save(folder / f"{key}-{kind}.png", optimize=True)  # a palette PNG: small


def _part(part: str, key: str, made: dict[str, Any]) -> dict[str, Any]:
    if part == "ink":
        return ink(key, made)
    if part == "blur":
        return blur(key, made, 2.0)
    return folds(key, made) if part == "folds" else stain(key)


def main() -> None:
    from slidefuse.bench.machine import machine_info

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slides", type=Path, default=REPO / ".cache" / "qc_slides", help="qc_slides.py's --out")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", default="ink,blur,folds,stain,areas,cost,pictures")
    ap.add_argument("--json", type=Path, default=RESULTS / "qc.json")
    args = ap.parse_args()
    made_all = json.loads((args.slides / "index.json").read_text())
    parts = set(args.parts.split(","))
    doc: dict[str, Any] = json.loads(args.json.read_text()) if args.json.exists() else {}
    doc["machine"] = machine_info()
    print(f"CPU: {doc['machine']['cpu']} [{doc['machine']['cpu_isa_summary']}], {doc['machine']['cores']} cores")
    with tempfile.TemporaryDirectory() as tmp:
        for part in ("ink", "blur", "folds", "stain"):
            if part in parts:
                doc[part] = {}
                for key, made in made_all.items():
                    doc[part][key] = _part(part, key, made)
                    print(part, key, json.dumps(doc[part][key]), flush=True)
        if "areas" in parts:
            doc["areas"] = areas(made_all["cmu"], Path(tmp))
            print("areas", json.dumps(doc["areas"]), flush=True)
        if "cost" in parts:
            doc["cost"] = cost(args.repeats, Path(tmp))
            print("cost", json.dumps(doc["cost"]), flush=True)
    if "pictures" in parts:
        pictures(made_all, RESULTS / "qc")
    args.json.write_text(json.dumps(doc, indent=1))
    print("wrote", args.json)


if __name__ == "__main__":
    main()
