"""The QC methods by name: adding one (a learned artifact model, say) is one module plus one line here."""

from __future__ import annotations

from slidefuse.runtime.qc.base import QCMethod
from slidefuse.runtime.qc.blur import BlurDetector
from slidefuse.runtime.qc.fold import FoldDetector
from slidefuse.runtime.qc.ink import InkDetector

METHODS: dict[str, QCMethod] = {"ink": InkDetector(), "folds": FoldDetector(), "blur": BlurDetector()}
METHOD_ORDER = ("ink", "folds", "blur")  # ink first: the later methods look at the tissue ink leaves


def method_versions() -> dict[str, dict[str, object]]:
    """{name: {"version", "params"}} of every method (part of the skip key: changed thresholds rerun a slide)."""
    return {name: {"version": m.version, "params": m.params()} for name, m in METHODS.items()}
