"""`preview.png` (the slide's thumbnail beside the same thumbnail with the mask overlaid, a scale bar and a
legend) and `tissue.png`.

Layout: an optional banner strip on top (e.g. a stain warning), then two panels side by side, each showing the
whole slide with its longest side at most `max_side` px: the raw thumbnail on the left, the overlay on the right;
a strip under them holds the legend of class names, colours and areas. In the overlay, class colours are
alpha-blended over the thumbnail and each class region is outlined in its colour at full strength; background
(class 0) stays untouched. Both panels carry a scale bar.

Colours: `runtime.palette.display_colors`: the bundle's own colours when its maker chose them, else a palette
that contrasts with haematoxylin and eosin (the report records which, under `palette`).
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slidefuse.atomic import atomic_path
from slidefuse.runtime.bundle import ClassInfo
from slidefuse.runtime.outputs.base import OutputContext, OutputOptions, OutputRecord
from slidefuse.runtime.outputs.raster import downsample_classes, open_mask
from slidefuse.runtime.palette import colours_chosen, display_colors
from slidefuse.runtime.qc.draw import draw_qc, stain_banner, tissue_image
from slidefuse.runtime.qc.run import QCResult
from slidefuse.runtime.types import MaskResult, SlideInfo

logger = logging.getLogger(__name__)

MAX_SIDE = 1000  # longest side of each of the preview's two panels in px
ALPHA = 0.45  # opacity of class colours over the thumbnail (the outlines are opaque)
GAP = 12  # px of white between the two panels
OVERLAY_PIXELS = 1 << 18  # pixels blended at a time (about 6 MB of float32 temporaries)
TISSUE_FILE = "tissue.png"  # the tissue mask on the thumbnail, written for every slide
BAD_TILE_COLOUR = (230, 0, 0)  # outline of tiles the decoders reported as corrupt


def preview_size(slide: SlideInfo, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(width, height) of each preview panel: the slide's aspect ratio, longest side <= max_side."""
    scale = min(1.0, max_side / max(slide.width, slide.height))
    return max(1, round(slide.width * scale)), max(1, round(slide.height * scale))


def overlay(
    rgb: np.ndarray, labels: np.ndarray, colors: Sequence[tuple[int, int, int]], alpha: float = ALPHA
) -> np.ndarray:
    """Blend class colours over an image.

    rgb: uint8 [h, w, 3]; labels: uint8 [h, w] class indices in the same frame; class 0 is left as is.
    Returns uint8 [h, w, 3].
    """
    lut = np.zeros((256, 3), dtype=np.float32)
    lut[: len(colors)] = np.asarray(colors, dtype=np.float32)
    out = np.empty(rgb.shape, dtype=np.uint8)
    step = max(1, OVERLAY_PIXELS // max(1, rgb.shape[1]))  # rows at a time: float32 temporaries stay small
    for r0 in range(0, rgb.shape[0], step):
        lab = labels[r0:r0 + step]
        a = np.where(lab > 0, np.float32(alpha), np.float32(0))[..., None]
        blend = rgb[r0:r0 + step].astype(np.float32) * (1 - a) + lut[lab] * a
        out[r0:r0 + step] = np.clip(np.rint(blend), 0, 255)
    return out


def _text_mask(text: str, size_px: int) -> np.ndarray:
    """Rendered `text` as a uint8 [h, w] coverage mask (255 = ink), about `size_px` px tall.

    Text is drawn by libvips (Pango), not by Pillow's FreeType: once libvips is loaded, the system
    libfreetype it links to clashes with the copy bundled in Pillow's wheels and Pillow draws garbage.
    Where libvips has no text support, Pillow's built-in bitmap font (no FreeType) is used instead.
    """
    try:
        import pyvips

        img = pyvips.Image.text(html.escape(text), font=f"sans {size_px}px", dpi=72)  # text is Pango markup
        mask = img.numpy()
        return np.asarray(mask[..., 0] if mask.ndim == 3 else mask, dtype=np.uint8)
    except Exception:  # libvips without Pango: fall back to the bitmap font
        from PIL import Image, ImageDraw, ImageFont

        font = ImageFont.load_default_imagefont()
        probe = ImageDraw.Draw(Image.new("L", (1, 1)))
        _, _, right, bottom = probe.textbbox((0, 0), text, font=font)
        canvas = Image.new("L", (max(1, int(right)), max(1, int(bottom))), 0)
        ImageDraw.Draw(canvas).text((0, 0), text, fill=255, font=font)
        return np.asarray(canvas, dtype=np.uint8)


def _draw_text(img: Any, xy: tuple[int, int], text: str, size_px: int, color: tuple[int, int, int]) -> int:
    """Draw `text` on a PIL RGB image with its top-left at `xy`; returns the text's width in px."""
    from PIL import Image

    mask = _text_mask(text, size_px)
    img.paste(color, (xy[0], xy[1], xy[0] + mask.shape[1], xy[1] + mask.shape[0]), Image.fromarray(mask))
    return int(mask.shape[1])


def _legend(width: int, classes: Sequence[ClassInfo], areas_mm2: Sequence[float], title: str,
            note: str = "") -> Any:
    """A white strip, `width` px wide, with a title line, one swatch + name + area per class >= 1, and a last
    line `note` in red when given."""
    from PIL import Image, ImageDraw

    pad, sw, row_h, text_px, title_px = 12, 18, 28, 17, 14
    entries = [(c, areas_mm2[i] if i < len(areas_mm2) else 0.0) for i, c in enumerate(classes) if i > 0]
    # Lay entries out left to right, wrapping at the strip's width.
    cells = []
    for c, mm2 in entries:
        mask = _text_mask(f"{c.name}  {mm2:.3g} mm²", text_px)
        cells.append((c, mask, sw + 8 + mask.shape[1] + 28))
    rows: list[list[tuple[ClassInfo, np.ndarray, int]]] = [[]]
    x = pad
    for cell in cells:
        if rows[-1] and x + cell[2] > width - pad:
            rows.append([])
            x = pad
        rows[-1].append(cell)
        x += cell[2]
    height = pad + row_h + (len(rows) + bool(note)) * row_h + pad // 2
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    _draw_text(img, (pad, pad), title, title_px, (40, 40, 40))
    y = pad + row_h
    for row in rows:
        x = pad
        for c, mask, cw in row:
            draw.rectangle([x, y + 1, x + sw, y + 1 + sw], fill=tuple(c.color), outline=(60, 60, 60))
            ty = y + 1 + (sw - mask.shape[0]) // 2
            box = (x + sw + 8, ty, x + sw + 8 + mask.shape[1], ty + mask.shape[0])
            img.paste((0, 0, 0), box, Image.fromarray(mask))
            x += cw
        y += row_h
    if note:
        _draw_text(img, (pad, y + 2), note, title_px, BAD_TILE_COLOUR)
    return img


def _outline_bad_tiles(img: Any, slide: SlideInfo) -> str:
    """Outline on `img` (the preview's image area) each bad tile of `slide.decode_errors` (level-0 boxes) in
    red; returns the legend's line about them ("" when there are none)."""
    from PIL import ImageDraw

    errors = slide.decode_errors
    if errors is None or not errors.count:
        return ""
    sx, sy = img.width / slide.width, img.height / slide.height
    draw = ImageDraw.Draw(img)
    for t in errors.tiles:
        x0, y0 = int(t.l0_x * sx), int(t.l0_y * sy)
        x1, y1 = max(x0 + 2, int((t.l0_x + t.width) * sx)), max(y0 + 2, int((t.l0_y + t.height) * sy))
        draw.rectangle([x0, y0, min(x1, img.width - 1), min(y1, img.height - 1)], outline=BAD_TILE_COLOUR, width=2)
    listed = "" if len(errors.tiles) == errors.count else f" ({len(errors.tiles)} outlined)"
    return f"{errors.count} tile(s) reported corrupt by the decoder{listed}, outlined in red: pixels there are " \
           "unreliable"


def outline(rgb: np.ndarray, labels: np.ndarray, colors: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """Paint, in place, the pixels of each class region (labels > 0) that touch another class (4-neighbours) in
    that class's colour. rgb: uint8 [h, w, 3]; labels: uint8 [h, w]. Returns rgb."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(colors)] = np.asarray(colors, dtype=np.uint8)
    edge = np.zeros(labels.shape, dtype=bool)
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge &= labels > 0
    rgb[edge] = lut[labels[edge]]
    return rgb


def _nice_length(max_um: float) -> float:
    """The largest of 1, 2, 5 x 10^k micrometres that is at most `max_um`."""
    p = 10.0 ** np.floor(np.log10(max_um))
    return next((m * p for m in (5, 2, 1) if m * p <= max_um), p)


def draw_scale_bar(img: Any, um_per_px: float) -> None:
    """A scale bar (a round length, at most a quarter of the width) in the bottom-left corner of a PIL image."""
    from PIL import ImageDraw

    if not um_per_px > 0 or img.width < 60:
        return
    um = _nice_length(img.width / 4 * um_per_px)
    bar = max(1, round(um / um_per_px))
    label = f"{um / 1000:g} mm" if um >= 1000 else f"{um:g} µm"
    text = _text_mask(label, 13)
    pad, x0 = 5, 8
    y1 = img.height - 8
    box_w, box_h = max(bar, text.shape[1]) + 2 * pad, text.shape[0] + 6 + 2 * pad
    draw = ImageDraw.Draw(img)
    draw.rectangle([x0, y1 - box_h, x0 + box_w, y1], fill=(255, 255, 255))
    draw.rectangle([x0 + pad, y1 - pad - 4, x0 + pad + bar - 1, y1 - pad], fill=(0, 0, 0))
    _draw_text(img, (x0 + pad, y1 - box_h + pad), label, 13, (0, 0, 0))


def _banner(width: int, text: str) -> Any:
    """A strip `width` px wide with `text` in dark red on pale yellow (a warning about the whole slide)."""
    from PIL import Image

    mask = _text_mask(text, 16)
    img = Image.new("RGB", (width, mask.shape[0] + 16), (255, 243, 176))
    _draw_text(img, (12, 8), text, 16, (140, 0, 0))
    return img


def draw_extras(img: Any, slide: SlideInfo, qc: QCResult | None = None) -> list[str]:
    """EXTRA OVERLAYS: marks drawn over the overlay panel (a PIL image covering the whole slide), each returning
    its legend line: decode-error tiles, then the QC regions (`runtime.qc.draw`)."""
    notes = [_outline_bad_tiles(img, slide), draw_qc(img, qc)]
    return [n for n in notes if n]


def write_preview(
    result: MaskResult,
    slide: SlideInfo,
    classes: Sequence[ClassInfo],
    path: Path,
    *,
    areas_mm2: Sequence[float] = (),
    title: str = "",
    max_side: int = MAX_SIDE,
    banner: str = "",
) -> dict[str, Any]:
    """Write `preview.png` atomically; returns its size and timing for the report.

    `classes` carry the colours to draw (see `display_colors`). The mask is downsampled with pyvips (nearest,
    streamed from the raw file) to the panel size, the thumbnail (`result.thumbnail`, uint8 [th, tw, 3] covering
    the whole slide) is resized with PIL to the same size, and the two are blended. `banner`: a line shown in a
    strip above the panels (e.g. a stain warning); none when empty.
    """
    from PIL import Image

    t0 = time.perf_counter()
    w, h = preview_size(slide, max_side)
    labels = downsample_classes(open_mask(result), w, h, num_classes=len(classes)).numpy()
    if labels.ndim == 3:
        labels = labels[..., 0]
    labels = labels.reshape(h, w)  # a 1 x 1 preview comes back from pyvips as a 0-d array
    thumb = np.asarray(result.thumbnail)
    if thumb.ndim == 2:
        thumb = np.repeat(thumb[..., None], 3, axis=2)
    base = Image.fromarray(np.ascontiguousarray(thumb[..., :3], dtype=np.uint8))
    base = base.resize((w, h), Image.Resampling.LANCZOS)
    colors = [c.color for c in classes]
    blended = Image.fromarray(outline(overlay(np.asarray(base), labels, colors), labels, colors))
    notes = draw_extras(blended, slide, result.qc)
    um_per_px = slide.mpp * slide.width / w if slide.mpp else 0.0
    for panel in (base, blended):
        draw_scale_bar(panel, um_per_px)
    width = 2 * w + GAP
    legend = _legend(max(width, 480), classes, areas_mm2, title or Path(slide.path).name, "; ".join(notes))
    top = _banner(max(width, legend.width), banner) if banner else None
    top_h = top.height if top is not None else 0
    canvas = Image.new("RGB", (max(width, legend.width), top_h + h + legend.height), (255, 255, 255))
    if top is not None:
        canvas.paste(top, (0, 0))
    canvas.paste(base, (0, top_h))
    canvas.paste(blended, (w + GAP, top_h))
    canvas.paste(legend, (0, top_h + h))
    with atomic_path(Path(path)) as tmp:
        canvas.save(tmp, format="PNG", optimize=False)
    seconds = time.perf_counter() - t0
    logger.info("wrote %s (%dx%d) in %.2f s", path, canvas.width, canvas.height, seconds)
    return {"file": Path(path).name, "width": canvas.width, "height": canvas.height, "image_width": w,
            "image_height": h, "layout": "raw | overlay", "overlay_x": w + GAP, "image_y": top_h, "alpha": ALPHA,
            "scale_um_per_px": um_per_px, "banner": banner or None, "seconds": seconds}


def write_tissue_png(result: MaskResult, path: Path) -> dict[str, Any]:
    """Write the tissue mask (bool [th, tw] on the thumbnail frame) as an 8-bit PNG (255 = tissue); with QC, a
    palette PNG whose other indices are the QC regions (`slidefuse.runtime.qc.draw.tissue_image`)."""

    tissue = np.asarray(result.tissue, dtype=bool)
    with atomic_path(Path(path)) as tmp:
        tissue_image(tissue, result.qc).save(tmp, format="PNG")
    return {"file": Path(path).name, "width": int(tissue.shape[1]), "height": int(tissue.shape[0])}


@dataclass(frozen=True)
class PreviewWriter:
    """Format "preview": `preview.png`, the thumbnail with the mask overlaid and a legend of class areas."""

    name: str = "preview"
    file_name: str = "preview.png"

    def write(self, context: OutputContext) -> OutputRecord:
        path = context.out_dir / self.file_name
        result, m = context.result, context.bundle.manifest
        areas = [(result.mpp / 1000.0) ** 2 * float(n) for n in result.class_pixels]
        title = f"{Path(context.slide.path).name} | {m.encoder} @ {m.mpp:g} um/px"
        title += " | RANDOM WEIGHTS" if m.random_weights else ""
        own = [c.color for c in context.classes]
        shown = display_colors(own, m.demo)
        classes = [ClassInfo(c.name, col) for c, col in zip(context.classes, shown, strict=True)]
        info = write_preview(result, context.slide, classes, path, areas_mm2=areas, title=title,
                             banner=stain_banner(result.qc))
        palette = "bundle" if colours_chosen(own, m.demo) else "review"
        return OutputRecord(path, {**info, "palette": palette, "colors": [list(c) for c in shown]})

    def is_current(self, report: Mapping[str, Any], options: OutputOptions) -> bool:
        return True  # the preview takes no options
