"""Helpers shared by the test_outputs_* files: MaskResult objects built from numpy masks, a fake bundle,
a SlideInfo, a real-slide mask derived from the CMU slide, GeoJSON rasterisation and the rerun check on a
folder. No tests here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from slidefuse.runtime.bundle import Bundle, ClassInfo, Manifest
from slidefuse.runtime.outputs import DEFAULT_FORMATS, OutputOptions, outputs_current, read_report
from slidefuse.runtime.types import LevelInfo, MaskResult, SlideInfo

CLASSES = (
    ClassInfo("background", (0, 0, 0)),
    ClassInfo("tumour", (220, 40, 40)),
    ClassInfo("stroma", (40, 110, 220)),
)


def make_bundle(tmp: Path, digest: str = "d" * 64, classes: tuple[ClassInfo, ...] = CLASSES) -> Bundle:
    """A Bundle object (no files needed by the output writers) with a tiny model's manifest."""
    manifest = Manifest(
        encoder="tiny-vit",
        patch_size=16,
        tile_size=512,
        mpp=1.0,
        classes=classes,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        random_weights=True,
    )
    return Bundle(path=tmp / "bundle", manifest=manifest, digest=digest)


def make_slide(width: int, height: int, mpp: float, path: Path = Path("/data/slide-1.svs")) -> SlideInfo:
    return SlideInfo(
        path=path,
        width=width,
        height=height,
        mpp=mpp,
        mpp_source="openslide",
        vendor="aperio",
        loader="openslideload",
        levels=(LevelInfo(width, height, 1.0),),
        objective_power=20.0,
    )


def make_result(
    mask: np.ndarray,
    raw_path: Path,
    mpp: float,
    *,
    num_classes: int = 3,
    thumbnail: np.ndarray | None = None,
    tissue: np.ndarray | None = None,
) -> MaskResult:
    """Write uint8 [h, w] class indices to `raw_path` and describe them as the stitcher would."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    mask.tofile(raw_path)
    h, w = mask.shape
    if thumbnail is None:
        th, tw = max(1, h // 8), max(1, w // 8)
        thumbnail = np.full((th, tw, 3), 235, dtype=np.uint8)
    if tissue is None:
        tissue = np.zeros(thumbnail.shape[:2], dtype=bool)
        tissue[: tissue.shape[0] // 2] = True
    return MaskResult(
        raw_path=raw_path,
        mask_width=w,
        mask_height=h,
        mpp=mpp,
        class_pixels=np.bincount(mask.ravel(), minlength=num_classes).astype(np.int64),
        tissue=tissue,
        thumbnail=thumbnail,
        tile_counts={"grid": 40, "tissue": 25, "run": 25},
        timings={"read": 1.0, "tissue": 0.1, "inference": 5.0, "stitch": 0.5, "total": 6.5},
        backend={"name": "ort-cpu", "providers": ["CPUExecutionProvider"]},
    )


def blobby_mask(h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 [h, w] in {0, 1, 2}: smooth regions with holes, islands in holes and some speckle."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    f1 = np.sin(xx / (w / 7.3) + rng.random() * 6) * np.cos(yy / (h / 5.1) + rng.random() * 6)
    f2 = np.sin(xx / (w / 23.0) + yy / (h / 17.0) + rng.random() * 6)
    m = np.zeros((h, w), np.uint8)
    m[f1 > 0.25] = 1
    m[(f2 > 0.55) & (f1 > -0.2)] = 2
    speckle = rng.random((h, w)) < 0.002
    m[speckle] = rng.integers(0, 3, int(speckle.sum()))
    return m


def cmu_mask(slide_path: Path, mpp: float = 2.0) -> tuple[np.ndarray, np.ndarray, SlideInfo]:
    """A 3-class mask of the real CMU slide at `mpp` um/px from its HSV saturation and brightness.

    Returns (mask uint8 [h, w] in {0,1,2}, thumbnail uint8 [h, w, 3], SlideInfo). Class 1 = tissue of
    moderate saturation, class 2 = strongly stained (saturated and dark) tissue.
    """
    import pyvips
    from scipy import ndimage

    img = pyvips.Image.new_from_file(str(slide_path))
    width, height = img.width, img.height
    slide_mpp = float(img.get("openslide.mpp-x"))
    scale = slide_mpp / mpp
    small = img.resize(scale)[:3]
    rgb = small.numpy().astype(np.float32)
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)
    sat = (mx - mn) / np.maximum(mx, 1)
    mask = np.zeros(sat.shape, np.uint8)
    mask[sat > 0.12] = 1
    mask[(sat > 0.3) & (mx < 170)] = 2
    mask = ndimage.median_filter(mask, size=3)
    return mask, small.numpy().astype(np.uint8), make_slide(width, height, slide_mpp, slide_path)


def rasterize_geojson(path: Path, slide: SlideInfo, width: int, height: int, num_classes: int) -> np.ndarray:
    """Rasterise mask.geojson back onto a [height, width] grid over the slide: uint8 class indices.

    A grid pixel takes the class of the feature that contains its centre (level-0 coordinates scaled by
    width / slide.width); 0 where none does.
    """
    import shapely

    fc = json.loads(Path(path).read_text())
    names = {}
    out = np.zeros((height, width), np.uint8)
    ys, xs = np.mgrid[0:height, 0:width]
    cx = (xs.ravel() + 0.5) * slide.width / width
    cy = (ys.ravel() + 0.5) * slide.height / height
    for f in fc["features"]:
        name = f["properties"]["classification"]["name"]
        names.setdefault(name, len(names) + 1)
        geom = shapely.from_geojson(json.dumps(f["geometry"]))
        x0, y0, x1, y1 = geom.bounds
        sel = (cx >= x0) & (cx <= x1) & (cy >= y0) & (cy <= y1)
        idx = np.nonzero(sel)[0]
        inside = shapely.contains_xy(geom, cx[idx], cy[idx])
        out.ravel()[idx[inside]] = CLASS_INDEX.get(name, names[name])
    return out


CLASS_INDEX = {c.name: i for i, c in enumerate(CLASSES)}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def current(out: Path, formats: frozenset[str] = DEFAULT_FORMATS, **options: Any) -> bool:
    """Whether `out` holds complete outputs of `formats` that are current for `options` (OutputOptions fields):
    `outputs_current` on its report.json."""
    report = read_report(out)
    return report is not None and outputs_current(out, report, OutputOptions(formats=formats, **options)) is None
