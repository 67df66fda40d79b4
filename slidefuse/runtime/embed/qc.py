"""Quality control for embeddings: the segment command's QC stage (`runtime.segment.stages.quality_control`, the
same methods, policy and stain check) run on the embedding plan's thumbnail, then read per tile.

- A tile more than `EXCLUDED_MAX_FRACTION` of whose area the policy excludes (pen ink by default; every method
  with ``qc="exclude"``) is not embedded. Tiles that keep some ink are embedded from the slide's own pixels.
- Every embedded tile gets a ``qc_flags`` byte: bit i is set when `FLAG_BITS[i]`'s map covers at least
  `FLAG_MIN_FRACTION` of the tile (ink left in a kept tile, a fold, blur), whatever the policy does with it.
- The stain estimate and whether it matches the model's go into the feature files' attributes (`qc_attrs`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slidefuse.runtime.grid import TileRC
from slidefuse.runtime.qc.run import QCResult

if TYPE_CHECKING:
    from slidefuse.runtime.bundle import Bundle
    from slidefuse.runtime.embed.options import EmbedOptions

FLAG_BITS = ("ink", "folds", "blur")  # qc_flags bit i (value 1 << i) is FLAG_BITS[i]
EXCLUDED_MAX_FRACTION = 0.5  # a tile whose area is more than this fraction excluded is not embedded
FLAG_MIN_FRACTION = 0.1  # a method's bit is set when its map covers at least this fraction of the tile


def run_embed_qc(slide_path: Path, slide: Any, view: Any, bundle: Bundle, options: EmbedOptions,
                 thumb: np.ndarray, tissue: np.ndarray, thumb_mpp: float) -> tuple[QCResult, np.ndarray]:
    """(the QC result, the tissue left once the excluded regions are taken out): segment's QC stage as is."""
    from slidefuse.runtime.segment.stages import quality_control

    qc, left, _keep = quality_control(slide_path, slide, view, bundle, options, thumb, tissue, thumb_mpp, {})
    return qc, left


class TileQC:
    """A QC result read per tile of the model-frame grid (tiles of `tile` px at `stride` px steps, `mpp` um/px)."""

    def __init__(self, qc: QCResult, tile: int, stride: int, mpp: float) -> None:
        self.qc, self.tile, self.stride = qc, tile, stride
        self.scale = mpp / qc.thumb_mpp  # thumbnail px per model px
        self._excluded = qc.excluded
        self._maps = {name: qc.maps[name].mask for name in FLAG_BITS if name in qc.maps}

    def _box(self, rc: TileRC) -> tuple[slice, slice]:
        """The tile's box on the thumbnail (covering it: floor of the start, ceil of the end, at least 1 px)."""
        r, c = rc
        h, w = self._excluded.shape
        y0, x0 = int(np.floor(r * self.stride * self.scale)), int(np.floor(c * self.stride * self.scale))
        y1 = int(np.ceil((r * self.stride + self.tile) * self.scale))
        x1 = int(np.ceil((c * self.stride + self.tile) * self.scale))
        y0, x0 = min(y0, h - 1), min(x0, w - 1)
        return slice(y0, max(min(y1, h), y0 + 1)), slice(x0, max(min(x1, w), x0 + 1))

    def kept(self, tiles: Iterable[TileRC]) -> list[TileRC]:
        """The tiles not mostly excluded, in the given order."""
        if not self._excluded.any():
            return list(tiles)
        return [rc for rc in tiles if float(self._excluded[self._box(rc)].mean()) <= EXCLUDED_MAX_FRACTION]

    def flags(self, rc: TileRC) -> int:
        """The tile's qc_flags byte (see FLAG_BITS)."""
        box = self._box(rc)
        out = 0
        for bit, name in enumerate(FLAG_BITS):
            mask = self._maps.get(name)
            if mask is not None and float(mask[box].mean()) >= FLAG_MIN_FRACTION:
                out |= 1 << bit
        return out


def qc_attrs(qc: QCResult, excluded_tiles: int) -> dict[str, Any]:
    """Attributes of the features dataset: the QC mode, the tiles QC left out, what was found, the stain check."""
    stain = qc.stain
    return {
        "qc_mode": qc.mode, "qc_excluded_tiles": int(excluded_tiles), "qc_found": ",".join(qc.flags()),
        "qc_model_stain": qc.model_stain, "qc_stain": stain.stain if stain is not None else None,
        "qc_stain_mismatch": bool(qc.stain_mismatch),
    }
