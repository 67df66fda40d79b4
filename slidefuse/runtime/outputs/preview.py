"""`preview.png` (slide thumbnail with the mask overlaid and a legend) and `tissue.png`.

The preview's image area shows the whole slide with its longest side at most `max_side` px; class
colours are alpha-blended over the thumbnail, background (class 0) stays transparent, and a strip under
the image holds a legend of class names, colours and areas.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slidefuse.runtime.bundle import ClassInfo
from slidefuse.runtime.outputs.atomic import atomic_path
from slidefuse.runtime.outputs.raster import downsample_classes, open_mask
from slidefuse.runtime.types import MaskResult, SlideInfo

logger = logging.getLogger(__name__)

MAX_SIDE = 1400  # longest side of the preview's image area in px
ALPHA = 0.45  # opacity of class colours over the thumbnail


def preview_size(slide: SlideInfo, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(width, height) of the preview image area: the slide's aspect ratio, longest side <= max_side."""
    scale = min(1.0, max_side / max(slide.width, slide.height))
    return max(1, round(slide.width * scale)), max(1, round(slide.height * scale))


def overlay(rgb: np.ndarray, labels: np.ndarray, colors: Sequence[tuple[int, int, int]], alpha: float = ALPHA) -> np.ndarray:
    """Blend class colours over an image.

    rgb: uint8 [h, w, 3]; labels: uint8 [h, w] class indices in the same frame; class 0 is left as is.
    Returns uint8 [h, w, 3].
    """
    lut = np.zeros((256, 3), dtype=np.float32)
    lut[: len(colors)] = np.asarray(colors, dtype=np.float32)
    a = np.where(labels > 0, np.float32(alpha), np.float32(0))[..., None]
    out = rgb.astype(np.float32) * (1 - a) + lut[labels] * a
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _font(size: int) -> tuple[Any, str]:
    """A font of `size` px and the area unit it can draw ("mm²" with DejaVu Sans, else "mm^2")."""
    from PIL import ImageFont

    try:
        return ImageFont.truetype("DejaVuSans.ttf", size), "mm²"
    except OSError:  # no DejaVu on this system: Pillow's own font, which lacks "²"
        pass
    try:
        return ImageFont.load_default(size=size), "mm^2"
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        return ImageFont.load_default(), "mm^2"


def _legend(width: int, classes: Sequence[ClassInfo], areas_mm2: Sequence[float], title: str) -> Any:
    """A white strip, `width` px wide, with a title line and one swatch + name + area per class >= 1."""
    from PIL import Image, ImageDraw

    font, unit = _font(17)
    small, _ = _font(14)
    pad, sw, row_h = 12, 18, 26
    entries = [(c, areas_mm2[i] if i < len(areas_mm2) else 0.0) for i, c in enumerate(classes) if i > 0]
    # Lay entries out left to right, wrapping at the strip's width.
    draw_probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    cells = []
    for c, mm2 in entries:
        label = f"{c.name}  {mm2:.3g} {unit}"
        cells.append((c, label, sw + 8 + int(draw_probe.textlength(label, font=font)) + 24))
    rows: list[list[tuple[ClassInfo, str, int]]] = [[]]
    x = pad
    for cell in cells:
        if rows[-1] and x + cell[2] > width - pad:
            rows.append([])
            x = pad
        rows[-1].append(cell)
        x += cell[2]
    height = pad + row_h + len(rows) * row_h + pad // 2
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text((pad, pad), title, fill=(40, 40, 40), font=small)
    y = pad + row_h
    for row in rows:
        x = pad
        for c, label, cw in row:
            draw.rectangle([x, y + 2, x + sw, y + 2 + sw], fill=tuple(c.color), outline=(60, 60, 60))
            draw.text((x + sw + 8, y), label, fill=(0, 0, 0), font=font)
            x += cw
        y += row_h
    return img


def write_preview(
    result: MaskResult,
    slide: SlideInfo,
    classes: Sequence[ClassInfo],
    path: Path,
    *,
    areas_mm2: Sequence[float] = (),
    title: str = "",
    max_side: int = MAX_SIDE,
) -> dict[str, Any]:
    """Write `preview.png` atomically; returns its size and timing for the report.

    The mask is downsampled with pyvips (nearest, streamed from the raw file) to the preview size, the
    thumbnail (`result.thumbnail`, uint8 [th, tw, 3] covering the whole slide) is resized with PIL to the
    same size, and the two are blended.
    """
    from PIL import Image

    t0 = time.perf_counter()
    w, h = preview_size(slide, max_side)
    labels = downsample_classes(open_mask(result), w, h, num_classes=len(classes), method="nearest").numpy()
    if labels.ndim == 3:
        labels = labels[..., 0]
    thumb = np.asarray(result.thumbnail)
    if thumb.ndim == 2:
        thumb = np.repeat(thumb[..., None], 3, axis=2)
    base = Image.fromarray(np.ascontiguousarray(thumb[..., :3], dtype=np.uint8)).resize((w, h), Image.Resampling.LANCZOS)
    blended = Image.fromarray(overlay(np.asarray(base), labels, [c.color for c in classes]))
    legend = _legend(w if w >= 480 else 480, classes, areas_mm2, title or Path(slide.path).name)
    canvas = Image.new("RGB", (max(w, legend.width), h + legend.height), (255, 255, 255))
    canvas.paste(blended, (0, 0))
    canvas.paste(legend, (0, h))
    with atomic_path(Path(path)) as tmp:
        canvas.save(tmp, format="PNG", optimize=False)
    seconds = time.perf_counter() - t0
    logger.info("wrote %s (%dx%d) in %.2f s", path, canvas.width, canvas.height, seconds)
    return {"file": Path(path).name, "width": canvas.width, "height": canvas.height, "image_width": w,
            "image_height": h, "alpha": ALPHA, "seconds": seconds}


def write_tissue_png(result: MaskResult, path: Path) -> dict[str, Any]:
    """Write the tissue mask (bool [th, tw] on the thumbnail frame) as an 8-bit PNG (255 = tissue)."""
    from PIL import Image

    tissue = np.asarray(result.tissue, dtype=bool)
    with atomic_path(Path(path)) as tmp:
        Image.fromarray(tissue.astype(np.uint8) * 255).save(tmp, format="PNG")
    return {"file": Path(path).name, "width": int(tissue.shape[1]), "height": int(tissue.shape[0])}
