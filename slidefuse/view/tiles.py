"""Deep Zoom tiles of a slide and of its overlays, rendered on demand.

Every layer of a slide shares the slide's Deep Zoom geometry (level 0 = the slide's level-0 size, 256 px tiles,
no overlap), so the browser stacks them without any alignment of its own. Level `l` of `max_level` is the slide
shrunk by `2 ** (max_level - l)`; a tile `(col, row)` of level `l` covers level pixels
`[col * 256, (col + 1) * 256) x [row * 256, (row + 1) * 256)`, cut at the level's edge.

- slide: read through slidefuse's own reader (`open_slide`, the colour pipeline that segmentation used) at the
  tile's pixel size; uint8 RGB, JPEG;
- mask: `mask.tif` (class indices) sampled nearest-neighbour from the pyramid level just finer than the tile,
  coloured per class (classes switched off stay transparent), filled or outlined; RGBA PNG;
- probs: one class's channel of `probs.ome.tif` (uint8, 255 = 1.0), as a heatmap whose opacity follows the
  probability; RGBA PNG.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TILE = 256  # Deep Zoom tile side, px
OUTLINE_PX = 2  # width of a class outline, screen px


@dataclass(frozen=True)
class DeepZoom:
    """Deep Zoom geometry of a level-0 image `width` x `height` px."""

    width: int
    height: int

    @property
    def max_level(self) -> int:
        return max(0, math.ceil(math.log2(max(self.width, self.height, 1))))

    def level_size(self, level: int) -> tuple[int, int]:
        """(width, height) of `level` in px."""
        s = 2 ** (self.max_level - level)
        return max(1, math.ceil(self.width / s)), max(1, math.ceil(self.height / s))

    def tile_box(self, level: int, col: int, row: int) -> tuple[int, int, int, int] | None:
        """(x, y, w, h) of tile (col, row) in `level`'s frame; None when the tile does not exist."""
        if not 0 <= level <= self.max_level or col < 0 or row < 0:
            return None
        lw, lh = self.level_size(level)
        x, y = col * TILE, row * TILE
        if x >= lw or y >= lh:
            return None
        return x, y, min(TILE, lw - x), min(TILE, lh - y)

    def descriptor(self, fmt: str) -> str:
        """The `.dzi` XML that OpenSeadragon reads."""
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="{fmt}" Overlap="0" '
                f'TileSize="{TILE}"><Size Width="{self.width}" Height="{self.height}"/></Image>\n')


def encode(pixels: np.ndarray, fmt: str) -> bytes:
    """uint8 [h, w, 3] (jpeg) or [h, w, 3|4] (png) -> the file's bytes."""
    import pyvips

    img = pyvips.Image.new_from_array(np.ascontiguousarray(pixels))
    if fmt == "jpeg":
        return bytes(img.jpegsave_buffer(Q=90, strip=True))
    return bytes(img.pngsave_buffer(compression=1))


class SlideLayer:
    """The slide itself, read by slidefuse's reader in true colours. Opens the file on first use."""

    def __init__(self, path: Path, mpp: float | None, colour_transform: str = "none") -> None:
        self.path = path
        self._mpp = mpp  # the pixel size the run used (None: the file's own)
        self._colour_transform = colour_transform
        self._reader: Any = None
        self._lock = threading.Lock()

    def reader(self) -> Any:
        with self._lock:
            if self._reader is None:
                from slidefuse.runtime.slide import open_slide

                # Pixels of tiles the decoder reports as corrupt are shown (segmentation counted them already).
                if self._mpp:
                    self._reader = open_slide(self.path, mpp=self._mpp, colour_transform=self._colour_transform,
                                              on_decode_error="warn")
                else:  # no pixel size anywhere: only ratios of pixel sizes matter to the tiles
                    self._reader = open_slide(self.path, default_mpp=1.0, colour_transform=self._colour_transform,
                                              on_decode_error="warn")
            return self._reader

    def geometry(self) -> DeepZoom:
        info = self.reader().info
        return DeepZoom(info.width, info.height)

    def tile(self, level: int, col: int, row: int) -> np.ndarray | None:
        """uint8 [h, w, 3] RGB of a Deep Zoom tile, or None when there is no such tile."""
        reader = self.reader()
        dz = DeepZoom(reader.info.width, reader.info.height)
        box = dz.tile_box(level, col, row)
        if box is None:
            return None
        view = reader.scaled(reader.mpp * 2 ** (dz.max_level - level))
        return np.asarray(view.read(*box))

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None


class Pyramid:
    """A single-band uint8 image and its coarser levels (pages or sub-IFDs of a TIFF), sampled nearest-neighbour.

    `l0_per_px`: slide level-0 px per px of the finest level. Levels are lazy pyvips images opened on first use.
    """

    def __init__(self, levels: Sequence[Any], l0_per_px: tuple[float, float]) -> None:
        self.levels = list(levels)
        self.l0_per_px = l0_per_px
        self._downs = [self.levels[0].width / lv.width for lv in self.levels]

    @classmethod
    def open(cls, path: Path, l0_per_px: tuple[float, float], *, page: int = 0, band: int = 0) -> Pyramid:
        """Levels of `path` for one plane: `page` (a plane per page) and `band`. Coarser levels are the TIFF's
        sub-IFDs of that page when it has them, else the following pages while each halves the previous (the
        layout libvips' `tiffsave(pyramid=True)` writes)."""
        import pyvips

        first = pyvips.Image.new_from_file(str(path), page=page, access="random")
        levels = [first]
        n_sub = first.get("n-subifds") if "n-subifds" in first.get_fields() else 0
        if n_sub:
            levels += [pyvips.Image.new_from_file(str(path), page=page, subifd=k) for k in range(n_sub)]
        elif page == 0:
            n_pages = first.get("n-pages") if "n-pages" in first.get_fields() else 1
            for k in range(1, n_pages):
                nxt = pyvips.Image.new_from_file(str(path), page=k)
                if nxt.width != max(1, math.ceil(levels[-1].width / 2)) and nxt.width != levels[-1].width // 2:
                    break
                levels.append(nxt)
        levels = [lv.extract_band(band) if lv.bands > 1 else lv for lv in levels]
        return cls(levels, l0_per_px)

    def sample(self, l0_x: float, l0_y: float, l0_step: float, w: int, h: int) -> np.ndarray:
        """uint8 [h, w]: the value under the centre of each of w x h output px, whose top-left px starts at
        level-0 (l0_x, l0_y) and which are each `l0_step` level-0 px wide; 0 outside the image."""
        step_x, step_y = l0_step / self.l0_per_px[0], l0_step / self.l0_per_px[1]  # finest-level px per output px
        k = max((i for i, d in enumerate(self._downs) if d <= min(step_x, step_y) + 1e-9), default=0)
        lv, d = self.levels[k], self._downs[k]
        xs = np.floor((l0_x / self.l0_per_px[0] + (np.arange(w) + 0.5) * step_x) / d).astype(np.int64)
        ys = np.floor((l0_y / self.l0_per_px[1] + (np.arange(h) + 0.5) * step_y) / d).astype(np.int64)
        out = np.zeros((h, w), dtype=np.uint8)
        okx, oky = (xs >= 0) & (xs < lv.width), (ys >= 0) & (ys < lv.height)
        if not okx.any() or not oky.any():
            return out
        x0, x1, y0, y1 = int(xs[okx].min()), int(xs[okx].max()), int(ys[oky].min()), int(ys[oky].max())
        crop = lv.crop(x0, y0, x1 - x0 + 1, y1 - y0 + 1).numpy()
        crop = crop.reshape(y1 - y0 + 1, x1 - x0 + 1)
        out[np.ix_(oky, okx)] = crop[np.ix_(ys[oky] - y0, xs[okx] - x0)]
        return out


def sample_tile(pyr: Pyramid, dz: DeepZoom, level: int, col: int, row: int) -> np.ndarray | None:
    """uint8 [h, w] values of `pyr` under Deep Zoom tile (col, row) of `level`; None when there is no such tile."""
    box = dz.tile_box(level, col, row)
    if box is None:
        return None
    s = 2 ** (dz.max_level - level)
    x, y, w, h = box
    return pyr.sample(x * s, y * s, s, w, h)


def colour_classes(labels: np.ndarray, colours: Sequence[tuple[int, int, int]], shown: Sequence[int],
                   outline: bool) -> np.ndarray:
    """RGBA uint8 [h, w, 4] of class indices `labels` (uint8 [h, w]): the classes in `shown` in their colours
    (opaque), everything else transparent; `outline` keeps only the pixels within OUTLINE_PX of another class."""
    lut = np.zeros((256, 4), dtype=np.uint8)
    for c in shown:
        if 0 < c < len(colours):
            lut[c, :3] = colours[c]
            lut[c, 3] = 255
    rgba = lut[labels]
    if outline:
        rgba[..., 3] = np.where(_edges(labels), rgba[..., 3], 0)
    return rgba


def _edges(labels: np.ndarray) -> np.ndarray:
    """bool [h, w]: pixels within OUTLINE_PX px (4-neighbourhood) of a pixel of another class."""
    pad = np.pad(labels, OUTLINE_PX, mode="edge")
    h, w = labels.shape
    edge = np.zeros(labels.shape, dtype=bool)
    for d in range(1, OUTLINE_PX + 1):
        for dy, dx in ((d, 0), (-d, 0), (0, d), (0, -d)):
            edge |= pad[OUTLINE_PX + dy: OUTLINE_PX + dy + h, OUTLINE_PX + dx: OUTLINE_PX + dx + w] != labels
    return edge


def _heat_lut() -> np.ndarray:
    """RGBA [256, 4]: probability 0..255 -> blue, cyan, yellow, red; opacity rising with the probability."""
    stops = np.array([[0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0]], dtype=np.float64)
    t = np.linspace(0, len(stops) - 1, 256)
    i = np.minimum(t.astype(int), len(stops) - 2)
    rgb = stops[i] + (stops[i + 1] - stops[i]) * (t - i)[:, None]
    alpha = np.clip(np.linspace(-0.1, 1.0, 256), 0, 1) * 230
    return np.concatenate([rgb, alpha[:, None]], axis=1).round().astype(np.uint8)


HEAT_LUT = _heat_lut()


def heatmap(values: np.ndarray) -> np.ndarray:
    """RGBA uint8 [h, w, 4] of probabilities uint8 [h, w] (255 = 1.0), after HEAT_LUT."""
    return HEAT_LUT[values]


QC_COLOURS = ((0, 0, 0), (255, 0, 255), (0, 255, 255), (255, 255, 0), (255, 128, 0), (0, 0, 255), (128, 0, 255))


def qc_image(labels: np.ndarray) -> np.ndarray:
    """RGBA uint8 [h, w, 4] of qc.png's label image (uint8 [h, w]: bit 0 tissue, then one bit per QC method, see
    `runtime.qc.run.LABEL_BITS`): pixels with a finding in the colour of their lowest finding bit, half opaque;
    tissue alone and glass transparent."""
    lut = np.zeros((256, 4), dtype=np.uint8)
    for v in range(2, 256):
        findings = v >> 1
        if findings:
            bit = (findings & -findings).bit_length()  # 1 for the first method's bit, 2 for the next, ...
            lut[v, :3] = QC_COLOURS[1 + (bit - 1) % (len(QC_COLOURS) - 1)]
            lut[v, 3] = 160
    return lut[labels]
