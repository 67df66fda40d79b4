"""The Python API's own checks of its arguments, so that it follows the command line's rules: an array it can
segment, an output folder name that is a plain, unreserved folder name, an output root that is not a model bundle,
no outputs replaced without `overwrite=True`, and a regions file that exists. Each refusal is one UsageError
naming the argument."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from slidefuse.errors import UsageError
from slidefuse.runtime.bundle import MANIFEST
from slidefuse.runtime.outputs.report import REPORT, read_report
from slidefuse.runtime.segment.inputs import out_name_problem

MIN_SIDE = 2  # px: the smallest height and width of an array the API segments
MAX_MANIFEST_BYTES = 64 << 20  # a manifest.json larger than this is not read to tell whether it is a bundle's


def check_array(array: np.ndarray) -> None:
    """Refuse what is not a uint8 [H, W, 3] RGB array of at least MIN_SIDE x MIN_SIDE px (one line naming the
    shape and dtype, and the minimum)."""
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise UsageError(f"array of shape ({', '.join(map(str, array.shape))}) and dtype {array.dtype}: expected "
                         "uint8 [H, W, 3] RGB in 0..255", field="array")
    h, w = array.shape[:2]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise UsageError(f"array of shape ({h}, {w}, 3) is {h} x {w} px: expected at least {MIN_SIDE} x {MIN_SIDE} "
                         "px (H, W)", field="array")


def check_name(name: object, field: str = "name") -> str:
    """`name` when it is a string that can be a slide's output folder (`inputs.out_name_problem`, the rule a slide
    list's out_name follows); otherwise one UsageError naming `field`."""
    if not isinstance(name, str):
        raise UsageError(f"{field} {name!r}: expected a string (a folder name)", field=field)
    shown = repr(name) if len(name) <= 60 else repr(name[:57]) + "..."
    why = out_name_problem(name)  # the one rule, shared with slide lists' out_name
    if why is not None:
        raise UsageError(f"{field} {shown} {why}", field=field)
    return name


def check_out(out_root: Path, bundle_path: Path | None = None) -> None:
    """Refuse an output root that is a file (or under one), or a model bundle or inside one (the model's own, or
    any folder whose manifest.json is a bundle's)."""
    here = Path(os.path.abspath(out_root))
    own = Path(os.path.abspath(bundle_path)) if bundle_path is not None else None
    existing = next((p for p in (here, *here.parents) if os.path.lexists(p)), None)
    if existing is not None and not existing.is_dir():
        raise UsageError(f"out {out_root}: {existing} is a file; pass a folder for the outputs", field="out")
    for folder in (here, *here.parents):
        if folder == own or _is_bundle(folder):
            raise UsageError(f"out {out_root} is inside the model bundle {folder}; pass an output folder outside "
                             "any bundle", field="out")


def _is_bundle(folder: Path) -> bool:
    manifest = folder / MANIFEST
    try:
        if not manifest.is_file() or manifest.stat().st_size > MAX_MANIFEST_BYTES:
            return False
        data: Any = json.loads(manifest.read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and "integrity" in data


def check_free(out_dir: Path, overwrite: bool) -> None:
    """The rule for an array's output folder (an array has no file to recognise its outputs by, so it is never
    skipped): without `overwrite`, refuse a folder that already holds outputs, naming the slide they are of when
    its report.json says."""
    if overwrite or not out_dir.is_dir():
        return
    held = [p.name for p in out_dir.iterdir() if not p.name.startswith(".")]
    if not held:
        return
    report = read_report(out_dir) if REPORT in held else None
    slide = report.get("slide", {}).get("path") if isinstance(report, dict) and isinstance(
        report.get("slide"), dict) else None
    whose = f"the outputs of {slide}" if slide else f"outputs ({', '.join(sorted(held)[:3])})"
    raise UsageError(f"{out_dir} already holds {whose}; pass overwrite=True to replace them, or another name",
                     field="name")


def check_roi(roi: object) -> Path:
    """`roi` as a Path when it names an existing file (its contents are read, and checked against the slide, when
    the slide is planned); otherwise one UsageError naming `roi`."""
    if isinstance(roi, bool) or not isinstance(roi, str | os.PathLike):
        raise UsageError(f"roi {roi!r}: expected the path of a regions file (a QuPath GeoJSON export or a mask "
                         "image)", field="roi")
    path = Path(roi)
    if not path.is_file():
        raise UsageError(f"roi {path}: no such file; pass a QuPath GeoJSON export or a mask image", field="roi")
    return path
