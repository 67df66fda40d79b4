"""The layers of one slide as the viewer draws them, opened lazily from the files its report records."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slidefuse.runtime.palette import display_colors
from slidefuse.view.catalogue import PROBS_FILE, SlideEntry
from slidefuse.view.tiles import DeepZoom, Pyramid, SlideLayer, colour_classes, heatmap, qc_image, sample_tile


@dataclass(frozen=True)
class ClassRow:
    """A class as the legend shows it."""

    index: int
    name: str
    colour: tuple[int, int, int]  # the display colour (runtime.palette.display_colors)
    area_mm2: float | None
    fraction: float | None


def _dict(d: Any, *keys: str) -> dict[str, Any]:
    """d[k0][k1]... when each is a dict, else {}."""
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d if isinstance(d, dict) else {}


def class_rows(report: dict[str, Any] | None) -> list[ClassRow]:
    """The model's classes (index 0, background, included) with display colours and the slide's areas."""
    model = _dict(report, "model")
    classes = [c for c in model.get("classes") or [] if isinstance(c, dict)]
    colours = display_colors([c.get("color") or (0, 0, 0) for c in classes], bool(model.get("demo")))
    areas = _dict(report, "areas")
    rows = []
    for i, (c, col) in enumerate(zip(classes, colours, strict=True)):
        a = areas.get(str(c.get("name")), {})
        rows.append(ClassRow(i, str(c.get("name")), col, a.get("area_mm2"), a.get("fraction")))
    return rows


def qc_section(report: dict[str, Any] | None) -> dict[str, Any] | None:
    q = (report or {}).get("qc")
    return q if isinstance(q, dict) else None


def qc_flags(report: dict[str, Any] | None) -> list[str]:
    """The QC section's flags as short texts."""
    flags = (qc_section(report) or {}).get("flags") or []
    out = []
    for f in flags if isinstance(flags, list) else [flags]:
        if isinstance(f, dict):
            out.append(str(f.get("name") or f.get("flag") or f.get("id") or f))
        else:
            out.append(str(f))
    return out


def qc_file(entry: SlideEntry) -> Path | None:
    """The QC label image (qc.png, at thumbnail scale) when the report records one and QC ran any method (with
    `--qc off` qc.png holds the tissue bit only: no layer to show)."""
    q = qc_section(entry.report) or {}
    if q.get("mode") == "off":
        return None
    names = [q.get("file"), _dict(q, "map").get("file"), _dict(entry.report, "outputs", "qc").get("file")]
    for n in names:
        if isinstance(n, str) and entry.file(n) is not None:
            return entry.file(n)
    return None


class SlideLayers:
    """Tiles of one slide's layers: the slide, its mask, its probabilities, its QC labels."""

    def __init__(self, entry: SlideEntry) -> None:
        self.entry = entry
        rep = entry.report or {}
        slide = _dict(rep, "slide")
        mpp = slide.get("mpp") if isinstance(slide.get("mpp"), int | float) and slide.get("mpp") else None
        self.classes = class_rows(entry.report)
        self.slide = SlideLayer(entry.slide_path, mpp, str(_dict(slide, "colour").get("color_transform") or "none")) \
            if entry.slide_path is not None else None
        self._mask: Pyramid | None = None
        self._probs: dict[int, Pyramid] = {}
        self._lock = threading.Lock()

    def geometry(self) -> DeepZoom | None:
        rep = _dict(self.entry.report, "slide")
        if isinstance(rep.get("width"), int) and isinstance(rep.get("height"), int):
            return DeepZoom(rep["width"], rep["height"])
        return self.slide.geometry() if self.slide is not None else None

    def _l0_per_px(self, record: dict[str, Any]) -> tuple[float, float] | None:
        for rec in (record, _dict(self.entry.report, "outputs", "tiff"), _dict(self.entry.report, "mask")):
            x, y = rec.get("l0_per_px_x"), rec.get("l0_per_px_y")
            if isinstance(x, int | float) and isinstance(y, int | float) and x > 0 and y > 0:
                return float(x), float(y)
        return None

    @property
    def mask_path(self) -> Path | None:
        name = _dict(self.entry.report, "outputs", "tiff").get("file")
        return self.entry.file(name) if isinstance(name, str) else None

    @property
    def probs_path(self) -> Path | None:
        name = _dict(self.entry.report, "outputs", "probs").get("file") or PROBS_FILE
        return self.entry.file(str(name))

    def mask_tile(self, level: int, col: int, row: int, shown: list[int], outline: bool) -> np.ndarray | None:
        dz, path = self.geometry(), self.mask_path
        per_px = self._l0_per_px({})
        if dz is None or path is None or per_px is None:
            return None
        with self._lock:
            if self._mask is None:
                self._mask = Pyramid.open(path, per_px)
            pyr = self._mask
        labels = sample_tile(pyr, dz, level, col, row)
        return None if labels is None else colour_classes(labels, [c.colour for c in self.classes], shown, outline)

    def probs_tile(self, cls: int, level: int, col: int, row: int) -> np.ndarray | None:
        dz, path = self.geometry(), self.probs_path
        per_px = self._l0_per_px(_dict(self.entry.report, "outputs", "probs"))
        if dz is None or path is None or per_px is None or not 0 <= cls < len(self.classes):
            return None
        with self._lock:
            if cls not in self._probs:
                self._probs[cls] = _open_channel(path, cls, len(self.classes), per_px)
            pyr = self._probs[cls]
        values = sample_tile(pyr, dz, level, col, row)
        return None if values is None else heatmap(values)

    def qc_png(self) -> np.ndarray | None:
        path = qc_file(self.entry)
        if path is None:
            return None
        from PIL import Image

        with Image.open(path) as im:
            labels = np.asarray(im if im.mode in ("L", "P") else im.convert("L"), dtype=np.uint8)
        return qc_image(labels)

    def close(self) -> None:
        if self.slide is not None:
            self.slide.close()


def _open_channel(path: Path, cls: int, n_classes: int, l0_per_px: tuple[float, float]) -> Pyramid:
    """Class `cls` of probs.ome.tif: band `cls` when the first page holds every class as bands, else page `cls`
    (an OME-TIFF's planes, one page per channel)."""
    import pyvips

    first = pyvips.Image.new_from_file(str(path), page=0)
    if first.bands >= n_classes:
        return Pyramid.open(path, l0_per_px, page=0, band=cls)
    return Pyramid.open(path, l0_per_px, page=cls)
