"""Slide metadata: the pixel size from an ordered chain of sources, the objective, report properties.

Each loader has a chain of pixel-size sources tried in order; the first plausible value wins and its name is
recorded (``SlideInfo.mpp_source``). OpenSlide formats: OpenSlide's ``openslide.mpp-x``, then the raw TIFF
resolution tags. TIFF / OME-TIFF: the TIFF resolution tags, then the OME-XML ``PhysicalSizeX``. Values
outside ``PLAUSIBLE_MPP`` and print placeholders (72, 300 dpi, ...) are ignored, not trusted.
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyvips

from slidefuse.runtime.coords import PLAUSIBLE_MPP

log = logging.getLogger(__name__)

# Pixel sizes outside PLAUSIBLE_MPP (um/px) are metadata placeholders (72 dpi, 1 px/mm, ...), not real ones.
# Raw properties copied into SlideInfo.properties (when present) for reports.
REPORT_PROPERTIES = (
    "openslide.vendor",
    "openslide.mpp-x",
    "openslide.mpp-y",
    "openslide.objective-power",
    "openslide.quickhash-1",
    "openslide.bounds-x",  # the region QuPath shows (it crops MIRAX slides to it); mask.geojson's frame
    "openslide.bounds-y",
    "openslide.bounds-width",
    "openslide.bounds-height",
    "aperio.AppMag",
    "aperio.MPP",
    "aperio.ScanScope ID",
    "aperio.Date",
    "hamamatsu.SourceLens",
    "tiff.Make",
    "tiff.Model",
    "tiff.Software",
    "tiff.ResolutionUnit",
    "resolution-unit",
)
_OME_UNITS = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4, "pm": 1e-6}


def field(image: pyvips.Image, name: str) -> Any:
    """A metadata field of ``image``, or None when absent."""
    return image.get(name) if image.get_typeof(name) != 0 else None


@dataclass(frozen=True)
class MetadataContext:
    """What the pixel-size sources read: the level-0 image, its loader, the path and any OME-XML."""

    image: pyvips.Image  # level 0 as opened by the loader (metadata only)
    loader: str  # "openslideload" or "tiffload"
    path: Path  # for log messages
    ome: ET.Element | None  # parsed OME-XML, when the image description holds one


@dataclass(frozen=True)
class PixelSizeSource:
    """One place a pixel size may come from."""

    name: str  # recorded as SlideInfo.mpp_source: "openslide", "tiff", "ome"
    read: Callable[[MetadataContext], float | None]  # um/px, or None when absent or implausible


def _plausible(mpp: float | None, what: str, path: Path) -> float | None:
    if mpp is None or not math.isfinite(mpp):
        return None
    lo, hi = PLAUSIBLE_MPP
    if not lo <= mpp <= hi:
        log.debug("%s: ignoring %s pixel size %.6g um/px (outside %g..%g um/px: a placeholder)",
                  path, what, mpp, lo, hi)
        return None
    return mpp


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _from_openslide(ctx: MetadataContext) -> float | None:
    return _plausible(_float(field(ctx.image, "openslide.mpp-x")), "openslide.mpp-x", ctx.path)


def mpp_from_resolution(res: float | None, unit: str | None, path: Path, what: str) -> float | None:
    """Pixel size from a TIFF resolution (px per ``unit``); None for absent units and print placeholders."""
    if res is None or res <= 0 or unit is None:
        return None
    unit = unit.lower()
    if unit in ("cm", "centimeter", "centimetre", "3"):
        per_mm = res / 10.0
    elif unit in ("in", "inch", "2"):
        if res <= 1200.5 and abs(res - round(res)) < 0.01:  # 72, 96, 300, 600 dpi: a print placeholder
            log.debug("%s: ignoring %s of %g dpi (a print placeholder, not a scan pixel size)", path, what, res)
            return None
        per_mm = res / 25.4
    elif unit == "mm":  # already px/mm (libvips' own xres)
        per_mm = res
    else:
        log.debug("%s: ignoring %s with resolution unit %r", path, what, unit)
        return None
    return _plausible(1000.0 / per_mm, what, path)


def _from_tiff_tags(ctx: MetadataContext) -> float | None:
    image = ctx.image
    if ctx.loader == "openslideload":  # OpenSlide exposes the raw tags as properties
        res, unit = _float(field(image, "tiff.XResolution")), field(image, "tiff.ResolutionUnit")
        return mpp_from_resolution(res, unit, ctx.path, "tiff.XResolution")
    unit = field(image, "resolution-unit")
    if unit is None:
        return None
    # libvips reports xres in px/mm whatever the file's unit; undo that to judge placeholders in dpi.
    raw = image.xres * (25.4 if unit == "in" else 10.0)
    return mpp_from_resolution(raw, unit, ctx.path, "TIFF XResolution")


def _pixels_element(root: ET.Element | None) -> ET.Element | None:
    if root is None:
        return None
    return next((el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"), None)


def _from_ome(ctx: MetadataContext) -> float | None:
    el = _pixels_element(ctx.ome)
    if el is None or el.get("PhysicalSizeX") is None:
        return None
    unit = el.get("PhysicalSizeXUnit", "µm")
    factor = _OME_UNITS.get(unit)
    size = _float(el.get("PhysicalSizeX"))
    if factor is None or size is None:
        log.debug("%s: unusable OME PhysicalSizeX %r %r", ctx.path, el.get("PhysicalSizeX"), unit)
        return None
    return _plausible(size * factor, "OME PhysicalSizeX", ctx.path)


OPENSLIDE = PixelSizeSource("openslide", _from_openslide)
TIFF_TAGS = PixelSizeSource("tiff", _from_tiff_tags)
OME_XML = PixelSizeSource("ome", _from_ome)
# The chain per loader, most trusted first.
CHAINS: dict[str, tuple[PixelSizeSource, ...]] = {
    "openslideload": (OPENSLIDE, TIFF_TAGS),
    "tiffload": (TIFF_TAGS, OME_XML),
}


def pixel_size(ctx: MetadataContext) -> tuple[float | None, str]:
    """(um/px, source name) from the first source of the loader's chain that has one; (None, "none")."""
    for source in CHAINS[ctx.loader]:
        mpp = source.read(ctx)
        if mpp is not None:
            return mpp, source.name
    return None, "none"


def ome_root(description: str | None) -> ET.Element | None:
    """The parsed OME-XML of an image description, or None."""
    if not description or "<OME" not in description:
        return None
    try:
        return ET.fromstring(description.encode("utf-8"))
    except ET.ParseError:
        return None


def objective(ctx: MetadataContext) -> float | None:
    """Nominal objective magnification, from OpenSlide's property or the OME-XML."""
    value = _float(field(ctx.image, "openslide.objective-power"))
    if value is not None or ctx.ome is None:
        return value
    el = next((e for e in ctx.ome.iter() if e.tag.endswith("}Objective") and e.get("NominalMagnification")), None)
    return _float(el.get("NominalMagnification")) if el is not None else None


def report_properties(image: pyvips.Image) -> dict[str, str]:
    """The raw properties of ``REPORT_PROPERTIES`` that the file has, as strings."""
    return {k: str(v) for k in REPORT_PROPERTIES if (v := field(image, k)) not in (None, "")}
