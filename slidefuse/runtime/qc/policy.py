"""What the ``qc`` option does with each method's regions.

- ``off``: no method runs; nothing is flagged or excluded (the stain check still runs: it costs nothing).
- ``flag``: every method runs; its regions are reported (report.json, tissue.png, preview.png, the API) and
  nothing is removed.
- ``default``: pen ink is excluded, blur and folds are flagged. Ink is never tissue, so it is removed
  whenever QC runs, unless ``flag`` asks for a report only.
- ``exclude``: every method's regions are excluded.

Excluded means: not counted as tissue, tiles that only touch excluded regions are not run, and the mask is
class 0 (background) there, so no class area counts them. Blur is measured per tile; an excluded blurry tile
is not run and its pixels are cut out of the mask.
"""

from __future__ import annotations

from slidefuse.errors import UsageError
from slidefuse.runtime.qc.base import QC_MODES, Action, QCMode

METHOD_NAMES = ("ink", "folds", "blur")  # every built-in method, in the order they run
DEFAULT_EXCLUDED = frozenset({"ink"})  # what the default policy excludes

ON_STAIN_MISMATCH = ("warn", "fail")


def check_mode(mode: str) -> QCMode:
    if mode not in QC_MODES:
        raise UsageError(f"qc must be one of {', '.join(QC_MODES)}, got {mode!r}", field="qc")
    return mode  # type: ignore[return-value]


def check_on_stain_mismatch(value: str) -> str:
    if value not in ON_STAIN_MISMATCH:
        raise UsageError(f"on_stain_mismatch must be one of {', '.join(ON_STAIN_MISMATCH)}, got {value!r}",
                         field="on_stain_mismatch")
    return value


def actions(mode: QCMode) -> dict[str, Action]:
    """{method name: "exclude" or "flag"} for every method the policy runs (none for ``off``)."""
    if mode == "off":
        return {}
    if mode == "flag":
        return dict.fromkeys(METHOD_NAMES, "flag")
    if mode == "exclude":
        return dict.fromkeys(METHOD_NAMES, "exclude")
    return {name: "exclude" if name in DEFAULT_EXCLUDED else "flag" for name in METHOD_NAMES}
