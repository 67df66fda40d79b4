"""Per-slide outputs of `slidefuse segment`, each written atomically, and the batch run log.

Files in a slide's output folder (`OUT/<slide stem>/`):

- `mask.tif` (format "tiff"): pyramidal tiled deflate TIFF of uint8 class indices, pixel size in its
  resolution tags (see `mask_tiff`).
- `mask.geojson` (format "geojson"): one QuPath annotation per connected region (see `geojson`).
- `preview.png` (format "preview"): thumbnail with the mask overlaid and a legend (see `preview`).
- `tissue.png`: the tissue mask found on the thumbnail (always written).
- `report.json` (format "report"): always written, and written last: it records the bundle digest and
  every file written with its size, which is what `outputs_complete` checks on a rerun.

Every file is written as `<name>.partial` and renamed when complete; `write_outputs` first removes an
existing report.json, so a slide whose rewrite is killed half-way is never taken for complete.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from slidefuse.errors import UsageError
from slidefuse.runtime.bundle import Bundle
from slidefuse.runtime.outputs.atomic import (
    TMP_SUFFIX,
    atomic_path,
    clean_temporaries,
    find_temporaries,
    fsync_dir,
    write_json_atomic,
)
from slidefuse.runtime.outputs.geojson import MAX_PIXELS, write_geojson
from slidefuse.runtime.outputs.mask_tiff import write_mask_tiff
from slidefuse.runtime.outputs.preview import write_preview, write_tissue_png
from slidefuse.runtime.outputs.raster import OutputError
from slidefuse.runtime.outputs.report import REPORT, build_report, read_report
from slidefuse.runtime.outputs.runlog import RUN_LOG, RunLog, read_run_log
from slidefuse.runtime.types import MaskResult, SlideInfo

__all__ = [
    "ALL_FORMATS",
    "FILE_NAMES",
    "RUN_LOG",
    "TISSUE_FILE",
    "TMP_SUFFIX",
    "OutputError",
    "RunLog",
    "atomic_path",
    "clean_temporaries",
    "outputs_complete",
    "parse_formats",
    "read_report",
    "read_run_log",
    "write_outputs",
]

logger = logging.getLogger(__name__)

FILE_NAMES = {"tiff": "mask.tif", "geojson": "mask.geojson", "preview": "preview.png", "report": REPORT}
ALL_FORMATS = frozenset(FILE_NAMES)  # {"tiff", "geojson", "report", "preview"}
TISSUE_FILE = "tissue.png"


def parse_formats(formats: str | frozenset[str] | set[str] | list[str] | tuple[str, ...]) -> frozenset[str]:
    """Validate output formats ("tiff,geojson" or a collection) against ALL_FORMATS; "all" means all."""
    items = [f.strip() for f in formats.split(",")] if isinstance(formats, str) else [str(f) for f in formats]
    items = [f for f in items if f]
    if "all" in items:
        return ALL_FORMATS
    bad = sorted(set(items) - ALL_FORMATS)
    if bad or not items:
        raise UsageError(
            f"output format(s) {', '.join(bad) or '(none)'} not understood; "
            f"choose among {', '.join(sorted(ALL_FORMATS))} (comma-separated) or 'all'"
        )
    return frozenset(items)


def _requested_mask_mpp(result: MaskResult, mask_mpp: float | None) -> float | None:
    """None when mask.tif is at the model's resolution, else the requested um/px."""
    if mask_mpp is None or abs(mask_mpp - result.mpp) <= 1e-9 * result.mpp:
        return None
    return float(mask_mpp)


def write_outputs(
    result: MaskResult,
    slide: SlideInfo,
    bundle: Bundle,
    out_dir: Path,
    formats: frozenset[str] = ALL_FORMATS,
    *,
    mask_mpp: float | None = None,
    extra_report: dict[str, Any] | None = None,
    geojson_mpp: float | None = None,
    geojson_max_pixels: int | None = MAX_PIXELS,
) -> dict[str, Path]:
    """Write a slide's outputs into `out_dir` atomically; returns {format: final path} (plus "tissue").

    result: the stitched mask (raw uint8 class indices at `result.mpp`) and run statistics.
    formats: a subset of ALL_FORMATS; report.json is written in any case, last, as the completion record.
    mask_mpp: write mask.tif at this coarser pixel size (um/px, mode downsampling); None = model's mpp.
    extra_report: JSON-able fields stored under "run" in report.json (e.g. options of the command).
    geojson_mpp / geojson_max_pixels: resolution of the grid that is polygonised (see `geojson`).
    """
    formats = parse_formats(formats)
    classes = bundle.manifest.classes
    if int(len(result.class_pixels)) not in (0, len(classes)):
        raise OutputError(
            f"the mask reports {len(result.class_pixels)} class counts but bundle {bundle.path} has "
            f"{len(classes)} classes; the mask was made by another model"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_temporaries(out_dir)
    report_path = out_dir / REPORT
    if report_path.exists():  # invalidate first: a rewrite killed half-way must not look complete
        report_path.unlink()
        fsync_dir(out_dir)
    paths: dict[str, Path] = {}
    described: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}

    def done(fmt: str, path: Path, info: dict[str, Any], t0: float) -> None:
        paths[fmt] = path
        info = dict(info)
        info["file"] = path.name
        info["bytes"] = path.stat().st_size
        described[fmt] = info
        seconds[fmt] = time.perf_counter() - t0

    def tiff() -> tuple[str, Path, dict[str, Any], float]:
        t0 = time.perf_counter()
        p = out_dir / FILE_NAMES["tiff"]
        info = write_mask_tiff(result, slide, p, num_classes=len(classes), mask_mpp=mask_mpp)
        info["requested_mask_mpp"] = _requested_mask_mpp(result, mask_mpp)
        return "tiff", p, info, t0

    def geojson() -> tuple[str, Path, dict[str, Any], float]:
        t0 = time.perf_counter()
        p = out_dir / FILE_NAMES["geojson"]
        info = write_geojson(result, slide, classes, p, geojson_mpp=geojson_mpp, max_pixels=geojson_max_pixels)
        return "geojson", p, info, t0

    def preview() -> tuple[str, Path, dict[str, Any], float]:
        t0 = time.perf_counter()
        p = out_dir / FILE_NAMES["preview"]
        areas = [(result.mpp / 1000.0) ** 2 * float(n) for n in result.class_pixels]
        m = bundle.manifest
        title = f"{Path(slide.path).name} | {m.encoder} @ {m.mpp:g} um/px" + (" | RANDOM WEIGHTS" if m.random_weights else "")
        return "preview", p, write_preview(result, slide, classes, p, areas_mm2=areas, title=title), t0

    t0 = time.perf_counter()
    done("tissue", out_dir / TISSUE_FILE, write_tissue_png(result, out_dir / TISSUE_FILE), t0)
    writers = [w for fmt, w in (("tiff", tiff), ("geojson", geojson), ("preview", preview)) if fmt in formats]
    # The writers read the raw mask and write different files; libvips, numpy and shapely release the GIL in
    # their heavy parts, so running them side by side uses the cores the engine has just left idle. The
    # first failure is raised once all have stopped (each write is atomic, so none leaves a partial file).
    with ThreadPoolExecutor(max_workers=max(1, len(writers)), thread_name_prefix="slidefuse-out") as pool:
        futures = [pool.submit(w) for w in writers]
    for fut in futures:
        done(*fut.result())
    report = build_report(result, slide, bundle, described, output_seconds=seconds, extra=extra_report)
    report["formats"] = sorted(formats | {"report"})
    write_json_atomic(report_path, report)
    paths["report"] = report_path
    logger.info("outputs of %s complete in %s (%s)", Path(slide.path).name, out_dir, ", ".join(sorted(paths)))
    return paths


def outputs_complete(
    out_dir: Path, bundle_digest: str, formats: frozenset[str], *, mask_mpp: float | None = None
) -> bool:
    """True when `out_dir` holds complete outputs of `formats` made by the bundle with `bundle_digest`.

    Checks: report.json is readable and records this digest and every requested format; each file it lists
    for those formats (and tissue.png) exists with the recorded size; no `*.partial` file is left; and,
    when "tiff" is requested, mask.tif was written at `mask_mpp` (None = the model's resolution).
    """
    formats = parse_formats(formats)
    out_dir = Path(out_dir)
    report = read_report(out_dir)
    if report is None:
        return False
    if report.get("bundle", {}).get("digest") != bundle_digest:
        return False
    if not formats <= set(report.get("formats", ())):
        return False
    if find_temporaries(out_dir):
        return False
    outputs = report.get("outputs", {})
    for fmt in (formats - {"report"}) | {"tissue"}:
        info = outputs.get(fmt)
        if not isinstance(info, dict) or "file" not in info:
            return False
        p = out_dir / str(info["file"])
        try:
            if p.stat().st_size != info.get("bytes"):
                return False
        except OSError:
            return False
    if "tiff" in formats:
        want = None if mask_mpp is None else float(mask_mpp)
        got = outputs["tiff"].get("requested_mask_mpp")
        model_mpp = report.get("mask", {}).get("mpp")
        if want is not None and model_mpp and abs(want - float(model_mpp)) <= 1e-9 * float(model_mpp):
            want = None
        if (want is None) != (got is None) or (want is not None and abs(float(got) - want) > 1e-9 * want):
            return False
    return True
