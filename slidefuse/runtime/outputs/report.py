"""`report.json`: what was segmented, with what, how fast, and how much of each class there is.

The report is written last of a slide's outputs: its presence, its bundle digest and its list of written
files (with sizes) are what the rerun check (`outputs_current`) reads to skip a finished slide.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from slidefuse.runtime.bundle import Bundle
from slidefuse.runtime.types import MaskResult, SlideInfo

logger = logging.getLogger(__name__)

REPORT = "report.json"
REPORT_FORMAT = "slidefuse-report/1"  # schema id of report.json


def _jsonable(v: Any) -> Any:
    """Convert numpy scalars/arrays, paths and tuples into JSON types (recursively)."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def software_versions() -> dict[str, str | None]:
    """Versions of slidefuse and the libraries that shape its outputs (None when not installed)."""
    from slidefuse._version import __version__

    out: dict[str, str | None] = {
        "slidefuse": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for dist in ("numpy", "pyvips", "onnxruntime", "shapely", "scipy", "pillow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    try:
        import pyvips

        out["libvips"] = f"{pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}"
    except Exception:  # pyvips present but libvips not loadable: record that it is unknown
        out["libvips"] = None
    if "torch" in sys.modules:  # only when a torch backend ran; never import it here
        out["torch"] = getattr(sys.modules["torch"], "__version__", None)
    return out


def slide_metadata(slide: SlideInfo) -> dict[str, Any]:
    """SlideInfo as a JSON dict (path, size in level-0 px, mpp and its source, vendor, levels, ...)."""
    return {
        "path": str(slide.path),
        "name": Path(slide.path).name,
        "width": slide.width,
        "height": slide.height,
        "mpp": slide.mpp,
        "mpp_source": slide.mpp_source,
        "vendor": slide.vendor,
        "loader": slide.loader,
        "objective_power": slide.objective_power,
        "levels": [{"width": lv.width, "height": lv.height, "downsample": lv.downsample}
                   for lv in slide.levels],
        "width_mm": slide.width * slide.mpp / 1000.0,
        "height_mm": slide.height * slide.mpp / 1000.0,
        "properties": dict(slide.properties),
        "colour": dataclasses.asdict(slide.colour) if slide.colour is not None else None,
        "decode_errors": decode_errors(slide),
    }


def decode_errors(slide: SlideInfo) -> dict[str, Any] | None:
    """The tiles the decoders reported as corrupt: {"count", "tiles": [{l0_x, l0_y, width, height, level,
    message}, ...] (the first ones found)}; None when the slide was not read."""
    errors = slide.decode_errors
    if errors is None:
        return None
    return {"count": errors.count, "tiles": [dataclasses.asdict(t) for t in errors.tiles]}


MAX_RECORD_CHARS = 16_384  # a free-form manifest field larger than this (as JSON) is not copied into a report


def _bounded(value: Any) -> Any:
    """A free-form manifest field as is, or, when its JSON is larger than MAX_RECORD_CHARS, a note saying where
    it is: a report never copies a huge manifest."""
    size = len(json.dumps(_jsonable(value)))
    if size <= MAX_RECORD_CHARS:
        return value
    return {"omitted": f"{size} characters of JSON; see the bundle's manifest.json"}


def model_card(bundle: Bundle) -> dict[str, Any]:
    """The manifest fields that describe the model (no file hashes or engine lists; free-form fields bounded)."""
    m = bundle.manifest
    return {
        "encoder": m.encoder,
        "patch_size": m.patch_size,
        "tile_size": m.tile_size,
        "mpp": m.mpp,
        "overlap": m.overlap,
        "classes": [{"index": i, "name": c.name, "color": list(c.color)} for i, c in enumerate(m.classes)],
        "random_weights": m.random_weights,
        "demo": m.demo,
        "weights": _bounded(m.weights),
        "parity": _bounded(m.parity),
        "created": m.created,
        "tools": _bounded(m.tools),
    }


def signature_record(bundle: Bundle) -> str | dict[str, Any]:
    """`bundle.signature` in report.json: "unsigned", or {"key_id", "trusted", "valid"}. A bundle whose
    signatures were not checked yet (loaded without `load_model`) is checked against the configured trust."""
    from slidefuse.runtime.signing import check_signatures, trusted_keys

    state = bundle.signature
    if state is None:
        try:
            trusted = trusted_keys()
        except ValueError:  # a trusted-keys file that cannot be read: nothing is trusted
            trusted = frozenset()
        state = check_signatures(bundle, trusted)
    return state.record()


def class_areas(result: MaskResult, class_names: list[str]) -> dict[str, dict[str, float | int]]:
    """Pixel count and area in mm² per class: area = pixels * (mpp / 1000)²."""
    counts = np.asarray(result.class_pixels, dtype=np.int64)
    px_mm2 = (result.mpp / 1000.0) ** 2
    total = max(int(counts.sum()), 1)
    out: dict[str, dict[str, float | int]] = {}
    for i, name in enumerate(class_names):
        n = int(counts[i]) if i < len(counts) else 0
        out[name] = {"index": i, "pixels": n, "area_mm2": n * px_mm2, "fraction": n / total}
    return out


def region_areas(result: MaskResult, class_names: list[str]) -> dict[str, Any] | None:
    """The regions of interest the slide was restricted to (None: none): the file (path, kind, sha256, the
    level-0 origin of its coordinates) and, per region in file order, its feature index, name, GeoJSON id (or
    None), pixels and area in mm², and per class its pixels and area in mm². Overlapping regions each count their
    own pixels."""
    found = result.regions
    if found is None:
        return None
    px_mm2 = (result.mpp / 1000.0) ** 2
    items = []
    for r in found.regions:
        classes = {name: {"pixels": int(r.class_pixels[i]), "area_mm2": int(r.class_pixels[i]) * px_mm2}
                   for i, name in enumerate(class_names)}
        items.append({"index": r.index, "name": r.name, "id": r.feature_id, "pixels": r.pixels,
                      "area_mm2": r.pixels * px_mm2, "classes": classes})
    return {"file": found.file, "kind": found.kind, "sha256": found.sha256, "offset_l0": list(found.offset_l0),
            "overlaps": "each region counts its own pixels", "regions": items}


def tissue_area(result: MaskResult, slide: SlideInfo) -> dict[str, float | int]:
    """Tissue found on the thumbnail: pixels, area in mm² and fraction of the slide.

    One thumbnail pixel covers (slide.width / thumb_w) x (slide.height / thumb_h) level-0 pixels.
    """
    tissue = np.asarray(result.tissue, dtype=bool)
    th, tw = tissue.shape[:2]
    n = int(tissue.sum())
    l0_px_per_thumb_px = (slide.width / max(tw, 1)) * (slide.height / max(th, 1))
    mm2 = n * l0_px_per_thumb_px * (slide.mpp / 1000.0) ** 2
    return {
        "thumbnail_width": tw,
        "thumbnail_height": th,
        "pixels": n,
        "area_mm2": mm2,
        "fraction": n / max(tw * th, 1),
    }


def throughput(result: MaskResult) -> dict[str, float | None]:
    """Tiles/s (inference stage and end to end) and megapixels/s of the slide at the model's mpp."""
    t = result.timings
    run = result.tile_counts.get("run", 0)
    mpx = result.mask_width * result.mask_height / 1e6

    def rate(x: float, key: str) -> float | None:
        s = t.get(key)
        return x / s if s else None

    return {
        "tiles_per_s_inference": rate(run, "inference"),
        "tiles_per_s_total": rate(run, "total"),
        "megapixels_per_s_total": rate(mpx, "total"),
        "slide_megapixels_at_model_mpp": mpx,
    }


def qc_report(result: MaskResult, slide: SlideInfo) -> dict[str, Any]:
    """report.json's "qc" section (`slidefuse.runtime.qc.report.qc_section`)."""
    from slidefuse.runtime.qc.report import qc_section

    th, tw = np.asarray(result.tissue).shape[:2]
    return qc_section(result.qc, (slide.width / max(tw, 1)) * (slide.height / max(th, 1)) * (slide.mpp / 1000.0) ** 2)


def build_report(
    result: MaskResult,
    slide: SlideInfo,
    bundle: Bundle,
    outputs: dict[str, dict[str, Any]],
    *,
    output_seconds: dict[str, float] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report as a JSON-ready dict. `outputs` maps each written format to its file and description."""
    timings = dict(result.timings)
    for fmt, s in (output_seconds or {}).items():
        timings[f"output_{fmt}"] = s
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "slide": slide_metadata(slide),
        "model": model_card(bundle),
        "bundle": {"path": str(bundle.path), "digest": bundle.digest, "signature": signature_record(bundle)},
        "backend": result.backend,
        "mask": {"width": result.mask_width, "height": result.mask_height, "mpp": result.mpp,
                 "l0_per_px_x": slide.width / result.mask_width,
                 "l0_per_px_y": slide.height / result.mask_height},
        "areas": class_areas(result, bundle.manifest.class_names),
        "tissue": tissue_area(result, slide),
        "tile_counts": dict(result.tile_counts),
        "timings": timings,
        "throughput": throughput(result),
        "software": software_versions(),
        "outputs": outputs,
        "formats": sorted(outputs),
        "extra": dict(result.extra),
        "qc": qc_report(result, slide),
    }
    regions = region_areas(result, bundle.manifest.class_names)
    if regions is not None:
        report["regions"] = regions
    if extra:
        report["run"] = dict(extra)
    return _jsonable(report)  # type: ignore[no-any-return]


def read_report(out_dir: Path) -> dict[str, Any] | None:
    """The report.json of a slide's output folder, or None when absent or unreadable."""
    p = Path(out_dir) / REPORT
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None
