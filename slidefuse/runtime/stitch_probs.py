"""The stitcher's probability band: blended class probabilities, quantised to uint8, streamed to a raw file.

The file holds ``height`` rows of ``width`` pixels of ``C`` interleaved uint8 channels (row-major
``[height, width, C]``, what libvips' ``rawload`` reads as a C-band uchar image): channel ``k`` is
``round(p_k * 255)``, where ``p_k`` is the blended probability of class ``k`` normalised by the summed blend
weights (``sum(w * p) / sum(w)`` over the tiles that covered the pixel; inside a tile's interior, where only
that tile counts, its own probability). Pixels no tile covered, and pixels a keep mask drops, are 0 in every
channel.

Memory: the band ``uint8 [T, width, C]`` and the upper tile row's blend weights ``float32 [o, padded width]``
(the weights the left neighbour adds are the blend window itself, so they need no buffer), nothing that grows
with the slide's height.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np

PROBS_SCALE = 255  # stored value = round(p * PROBS_SCALE)


def quantise_into(dst: np.ndarray, probs: np.ndarray, scale: np.ndarray | None = None) -> None:
    """Write float ``[C, h, w]`` probabilities into uint8 ``dst`` ``[h, w, C]`` as round(p * 255) (half up),
    clipped to 0..255; ``scale`` (float32 ``[h, w]``), when given, multiplies ``p`` first (1 / summed weights)."""
    tmp = np.empty(probs.shape[1:], dtype=np.float32)
    factor = np.float32(PROBS_SCALE) if scale is None else scale * np.float32(PROBS_SCALE)
    for k in range(probs.shape[0]):
        np.multiply(probs[k], factor, out=tmp)
        np.clip(tmp, np.float32(-0.5), np.float32(PROBS_SCALE), out=tmp)
        np.add(tmp, np.float32(0.5), out=dst[..., k], casting="unsafe")  # truncation after + 0.5: half up


class ProbabilityBand:
    """One tile row of quantised probabilities (``uint8 [T, width, C]``), written to ``path`` row band by row
    band, and the blend weights the upper tile row leaves for the next one. Driven by `Stitcher`."""

    def __init__(self, path: Path, num_classes: int, tile: int, overlap: int, width: int,
                 padded_width: int) -> None:
        self.path = Path(path)
        self.band = np.zeros((tile, width, num_classes), dtype=np.uint8)
        self.bottom_w = np.zeros((overlap, padded_width), dtype=np.float32)  # next row's top o rows' weights
        self._file: BinaryIO | None = open(self.path, "wb")  # closed in close()

    def nbytes(self) -> int:
        return int(self.band.nbytes + self.bottom_w.nbytes)

    def clear(self, y0: int, y1: int, x0: int, x1: int) -> None:
        """No tile covers band rows ``y0:y1``, columns ``x0:x1`` (model frame): 0 in every channel."""
        self.band[y0:y1, x0:x1] = 0

    def put(self, probs: np.ndarray, y0: int, x0: int) -> None:
        """Quantise float ``[C, h, w]`` probabilities into the band at row ``y0``, model-frame column ``x0``."""
        _, h, w = probs.shape
        quantise_into(self.band[y0 : y0 + h, x0 : x0 + w], probs)

    def put_blended(self, acc: np.ndarray, weights: np.ndarray, y0: int, x0: int) -> None:
        """``acc / weights`` (float ``[C, h, w]`` weighted sums and ``[h, w]`` summed weights) into the band;
        0 where no weight was added."""
        inverse = np.divide(np.float32(1), weights, out=np.zeros_like(weights), where=weights > 0)
        _, h, w = acc.shape
        quantise_into(self.band[y0 : y0 + h, x0 : x0 + w], acc, inverse)

    def write(self, rows: int, kept: np.ndarray | None) -> None:
        """Write the band's first ``rows`` rows, 0 where ``kept`` (bool ``[rows, width]``) is False."""
        band = self.band[:rows]
        if kept is not None:
            band[~kept] = 0
        if self._file is None:
            raise RuntimeError(f"{self.path}: probability file already closed")
        self._file.write(np.ascontiguousarray(band).data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
