"""Running the QC methods on a slide being planned, and what they leave: a `QCResult`.

`run_qc` runs the methods (ink, then folds and blur on the tissue ink leaves) and the stain check right after
tissue detection; the caller takes ``excluded`` out of the tissue before choosing tiles and cuts it out of the
mask with a keep mask.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from slidefuse.errors import SlidefuseError
from slidefuse.runtime.qc.base import Action, QCInput, QCMap, QCMode
from slidefuse.runtime.qc.methods import METHOD_ORDER, METHODS
from slidefuse.runtime.qc.policy import actions
from slidefuse.runtime.qc.stain import StainEstimate, estimate_stain

log = logging.getLogger(__name__)


class StainMismatch(SlidefuseError, ValueError):
    """The slide's stain is not the one the model was trained on (``on_stain_mismatch="fail"``)."""


@dataclass(frozen=True)
class QCResult:
    """QC of one slide. Maps are bool ``[thumb_h, thumb_w]`` at ``thumb_mpp`` (the tissue thumbnail's frame).
    ``tissue``: the tissue found before any exclusion; ``excluded``: the union of the excluded maps."""

    mode: QCMode
    thumb_mpp: float
    tissue: np.ndarray
    maps: dict[str, QCMap] = field(default_factory=dict)
    actions: dict[str, Action] = field(default_factory=dict)
    stain: StainEstimate | None = None
    model_stain: str = "H&E"

    @property
    def excluded(self) -> np.ndarray:
        out = np.zeros(self.tissue.shape, dtype=bool)
        for name, m in self.maps.items():
            if self.actions.get(name) == "exclude":
                out |= m.mask
        return out

    @property
    def stain_mismatch(self) -> bool:
        return self.stain is not None and not self.stain.matches(self.model_stain)

    def flags(self) -> list[str]:
        """Short names of what was found: a method's name when its map is not empty, "stain-mismatch"."""
        found = [name for name, m in self.maps.items() if m.mask.any()]
        return found + (["stain-mismatch"] if self.stain_mismatch else [])

    def labels(self) -> np.ndarray:
        """uint8 ``[thumb_h, thumb_w]`` label image: bit 1 tissue, then one bit per method in `LABEL_BITS`."""
        out = self.tissue.astype(np.uint8)
        for name, bit in LABEL_BITS.items():
            if name in self.maps:
                out |= self.maps[name].mask.astype(np.uint8) << bit
        return out


LABEL_BITS = {"ink": 1, "folds": 2, "blur": 3}  # qc.png's bits (bit 0: tissue)


def run_qc(thumb: np.ndarray, tissue: np.ndarray, thumb_mpp: float, mode: QCMode, *, slide: Any = None,
           view: Any = None, model_mpp: float = 1.0, model_stain: str = "H&E", on_stain_mismatch: str = "warn",
           name: str = "") -> QCResult:
    """The methods `actions(mode)` names and the stain check, on the thumbnail (uint8 ``[h, w, 3]``) and its
    tissue (bool ``[h, w]``) at ``thumb_mpp``; blur also reads the slide (``view`` at ``model_mpp``, or
    ``slide.scaled``). Raises StainMismatch when the stain differs from ``model_stain`` and
    ``on_stain_mismatch`` is "fail"; logs a warning otherwise."""
    todo = actions(mode)
    qc_input = QCInput(thumb, tissue, thumb_mpp, slide, view, model_mpp)
    maps: dict[str, QCMap] = {}
    for method in METHOD_ORDER:
        if method in todo:
            maps[method] = METHODS[method].run(replace(qc_input, tissue=tissue & ~_union(maps)))
    stain = estimate_stain(thumb, tissue & ~_union(maps))
    result = QCResult(mode, thumb_mpp, tissue, maps, todo, stain, model_stain)
    if result.stain_mismatch:
        msg = (f"{name}: the tissue's stain looks like {stain.stain} (eosin {stain.shares['eosin']:.0%}, DAB "
               f"{stain.shares['dab']:.0%} of its optical density) but the model was trained on {model_stain}: "
               "its classes may mean nothing here")
        if on_stain_mismatch == "fail":
            raise StainMismatch(msg + "; pass on_stain_mismatch=warn to segment it anyway")
        log.warning("%s", msg)
    return result


def _union(maps: dict[str, QCMap]) -> np.ndarray | bool:
    """What earlier methods found (ink is dark and sharp-edged: folds and blur never claim it)."""
    out: np.ndarray | bool = False
    for m in maps.values():
        out = out | m.mask
    return out
