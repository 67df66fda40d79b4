"""report.json's ``qc`` section."""

from __future__ import annotations

from typing import Any

from slidefuse.runtime.qc.methods import METHODS
from slidefuse.runtime.qc.run import QCResult


def qc_section(qc: QCResult | None, l0_mm2_per_thumb_px: float) -> dict[str, Any]:
    """{"mode", "methods": {name: {action, area_mm2, fraction_of_tissue, tiles_flagged, tiles_assessed,
    method, version, thresholds, details}}, "stain": {...}, "flags": [...]}. Fractions are of the tissue found
    before any exclusion. ``l0_mm2_per_thumb_px``: the slide area one thumbnail pixel covers, mm²."""
    if qc is None:
        return {"mode": "off", "methods": {}, "stain": None, "flags": []}
    tissue_px = max(int(qc.tissue.sum()), 1)
    methods: dict[str, Any] = {}
    for name, m in qc.maps.items():
        px = int(m.mask.sum())
        details = {k: v for k, v in m.details.items() if k != "flagged_tiles"}
        methods[name] = {"action": qc.actions.get(name), "area_mm2": px * l0_mm2_per_thumb_px,
                         "fraction_of_tissue": int((m.mask & qc.tissue).sum()) / tissue_px,
                         "tiles_flagged": m.tiles_flagged, "tiles_assessed": m.tiles_assessed,
                         "method": type(METHODS[name]).__name__ if name in METHODS else name,
                         "version": METHODS[name].version if name in METHODS else None,
                         "thresholds": METHODS[name].params() if name in METHODS else {}, "details": details}
    stain = None if qc.stain is None else {**qc.stain.to_dict(), "model": qc.model_stain,
                                           "mismatch": qc.stain_mismatch}
    return {"mode": qc.mode, "methods": methods, "stain": stain, "flags": qc.flags(),
            "map": {"file": "qc.png", "bits": {"tissue": 0, **_bits()}}}


def _bits() -> dict[str, int]:
    from slidefuse.runtime.qc.run import LABEL_BITS

    return dict(LABEL_BITS)
