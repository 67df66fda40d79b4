"""Quality control of slides: pen ink, blur, folds (maps at the thumbnail's scale) and a stain check.

Modules: `base` (the `QCMethod` seam and `QCMap`), `ink`, `blur`, `fold`, `stain` (the methods), `methods` (the
registry by name), `policy` (what ``qc=off|flag|default|exclude`` does), `run` (running them while a slide is
planned: `QCResult`), `report` (report.json's ``qc`` section), `draw` (the regions on tissue.png, preview.png,
and qc.png).
"""

from slidefuse.runtime.qc.base import QC_MODES, QCInput, QCMap, QCMethod, QCMode
from slidefuse.runtime.qc.run import QCResult, StainMismatch

__all__ = ["QC_MODES", "QCInput", "QCMap", "QCMethod", "QCMode", "QCResult", "StainMismatch"]
