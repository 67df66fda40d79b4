"""The demonstration bundle (`slidefuse/data/default/`): where it lives, how it is marked, how it is checked.

The check runs the bundle over a slide through the runtime (`runtime.segment.segment_many`, onnxruntime CPU),
then compares its tissue (every non-background class) with a plain Otsu tissue mask of the slide's thumbnail
(Otsu's threshold on HSV saturation, no morphology: independent of the runtime's tissue detector that made
the training labels), and measures how much of the predicted tissue each tissue class covers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from slidefuse.errors import BundleError

log = logging.getLogger(__name__)

DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "data" / "default"
DEMO_NOTE = ("Demonstration model: a tiny ViT + the shared decoder trained on colour-deconvolution pseudo-labels "
             "of two public H&E slides. It shows the pipeline working; it is not a diagnostic model.")


def mark_demo(bundle_dir: Path, extra_files: dict[str, str] | None = None) -> None:
    """Set `demo: true` in a bundle's manifest (adding `extra_files`, name -> text, to the bundle first) and
    re-hash its files. A workaround while `slidefuse export` has no option for it."""
    from slidefuse.runtime.bundle import read_manifest, write_manifest

    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    for name, text in (extra_files or {}).items():
        (bundle_dir / name).write_text(text)
    write_manifest(bundle_dir, dataclasses.replace(manifest, demo=True))


def otsu_tissue(thumbnail_rgb: np.ndarray) -> np.ndarray:
    """Plain Otsu tissue mask: uint8 RGB [h, w, 3] -> bool [h, w], True where HSV saturation > Otsu threshold."""
    from slidefuse.runtime.tissue import otsu_threshold, saturation_value

    sat, _ = saturation_value(thumbnail_rgb)
    return np.asarray(sat > otsu_threshold(sat.ravel()), dtype=bool)


def _resize_nearest(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = labels.shape
    ys = np.minimum((np.arange(shape[0]) + 0.5) * h / shape[0], h - 1).astype(int)
    xs = np.minimum((np.arange(shape[1]) + 0.5) * w / shape[1], w - 1).astype(int)
    return labels[ys[:, None], xs[None, :]]


def check_on_slide(bundle_dir: Path | str, slide: Path | str, out_dir: Path | str, *, all_tiles: bool = True,
                   thumb_max_side: int = 1024) -> dict[str, Any]:
    """Segment `slide` with the bundle and return the figures of the done-when check.

    `all_tiles=True` runs the model on every tile (glass included), so the background it reports is the
    model's own call, not the runtime's tissue detector's. Returns a dict with `agreement` (fraction of
    thumbnail pixels where model tissue == Otsu tissue), `tissue_class_fractions` (class -> fraction of the
    model's tissue), `model_tissue_fraction`, `otsu_tissue_fraction`, `seconds`, `mask_size`.
    """
    import pyvips

    from slidefuse.runtime.bundle import load_bundle
    from slidefuse.runtime.segment import SegmentOptions, segment_many
    from slidefuse.runtime.slide import open_slide

    bundle = load_bundle(bundle_dir)
    options = SegmentOptions(all_tiles=all_tiles, overwrite=True, formats=frozenset({"tiff", "report", "preview"}))
    (result,) = segment_many([Path(slide)], bundle, Path(out_dir), options)
    if not result.ok or result.out_dir is None:
        raise BundleError(f"{slide}: the demonstration bundle failed on it: {result.error}")
    mask = pyvips.Image.new_from_file(str(result.out_dir / "mask.tif"), page=0)
    labels = np.ndarray(buffer=mask.write_to_memory(), dtype=np.uint8, shape=(mask.height, mask.width))
    with open_slide(slide) as s:
        thumb = s.thumbnail(thumb_max_side)
    otsu = otsu_tissue(thumb)
    model_labels = _resize_nearest(labels, otsu.shape)
    model_tissue = model_labels > 0
    m = bundle.manifest
    n_tissue = max(1, int(np.count_nonzero(labels > 0)))
    fractions = {c.name: float(np.count_nonzero(labels == i)) / n_tissue for i, c in enumerate(m.classes) if i > 0}
    return {
        "slide": Path(slide).name, "bundle": str(bundle.path), "all_tiles": all_tiles,
        "agreement": float(np.mean(model_tissue == otsu)),
        "model_tissue_fraction": float(model_tissue.mean()), "otsu_tissue_fraction": float(otsu.mean()),
        "tissue_class_fractions": fractions, "seconds": round(result.seconds, 2),
        "mask_size": [int(mask.width), int(mask.height)], "thumbnail_size": [int(thumb.shape[1]), int(thumb.shape[0])],
        "outputs": {k: str(v) for k, v in result.outputs.items()},
    }


def copy_preview(figures: dict[str, Any], dest: Path) -> None:
    """Copy the check's preview.png to `dest` (for the README / docs)."""
    src = figures.get("outputs", {}).get("preview")
    if src:
        shutil.copyfile(src, dest)


def figures_json(figures: dict[str, Any]) -> str:
    return json.dumps(figures, indent=2) + "\n"
