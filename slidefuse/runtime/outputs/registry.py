"""The output formats by name: one registry read by `write_outputs`, `outputs_current`, `segment` and the
CLI's `--formats`.

Adding a format is one module with a writer class (see `base.OutputWriter`) and one `register_writer` line
below. Tests register their own writers with `register_writer` and remove them with `unregister_writer`.
"""

from __future__ import annotations

import re

from slidefuse.errors import UnknownName, UsageError, did_you_mean
from slidefuse.runtime.outputs.base import OutputWriter
from slidefuse.runtime.outputs.geojson import GeoJsonWriter
from slidefuse.runtime.outputs.mask_tiff import MaskTiffWriter, PaletteTiffWriter
from slidefuse.runtime.outputs.preview import TISSUE_FILE, PreviewWriter
from slidefuse.runtime.outputs.probs import ProbsWriter
from slidefuse.runtime.outputs.report import REPORT
from slidefuse.runtime.outputs.zarr import ProbsZarrWriter, ZarrWriter
from slidefuse.runtime.qc.draw import QC_FILE
from slidefuse.runtime.types import RUN_LOG

REPORT_FORMAT = "report"  # always written, last, by write_outputs itself: the record that a slide is complete
_RESERVED_NAMES = frozenset({REPORT_FORMAT, "all", "tissue", "qc"})  # tissue.png (always), qc.png (with QC)
_RESERVED_FILES = frozenset({REPORT, TISSUE_FILE, QC_FILE, RUN_LOG})
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")

_writers: dict[str, OutputWriter] = {}  # in registration order, which is the order of --help and report.json


def register_writer(writer: OutputWriter) -> OutputWriter:
    """Add an output format; returns `writer`. Its name and file name must be new, and the name lower case."""
    name, file_name = writer.name, writer.file_name
    if not _NAME.fullmatch(name) or name in _RESERVED_NAMES:
        raise UsageError(f"output format name {name!r} is not allowed: use lower-case letters, digits, '-' "
                         f"or '_', and none of {', '.join(sorted(_RESERVED_NAMES))}")
    if name in _writers:
        raise UsageError(f"output format {name!r} is already registered; unregister_writer({name!r}) first")
    taken = {w.file_name: w.name for w in _writers.values()}
    if file_name in taken or file_name in _RESERVED_FILES or "/" in file_name or not file_name:
        owner = f"format {taken[file_name]!r}" if file_name in taken else "slidefuse itself"
        raise UsageError(f"output file name {file_name!r} of format {name!r} is not free (used by {owner}); "
                         "choose another file name")
    _writers[name] = writer
    return writer


def unregister_writer(name: str) -> None:
    """Remove a registered output format (e.g. a test's own); raises UnknownName for an unknown one."""
    get_writer(name)
    del _writers[name]


def get_writer(name: str) -> OutputWriter:
    """The writer of format `name`; an unknown name raises UnknownName listing the registered ones."""
    try:
        return _writers[name]
    except KeyError:
        known = ", ".join(_writers)
        raise UnknownName(f"output format {name!r} is not registered{did_you_mean(name, _writers)}; registered: "
                          f"{known}") from None


def writers() -> tuple[OutputWriter, ...]:
    """The registered writers, in registration order."""
    return tuple(_writers.values())


def format_names() -> tuple[str, ...]:
    """Every format `--formats` accepts: the registered writers' names, then "report"."""
    return (*_writers, REPORT_FORMAT)


def parse_formats(formats: str | frozenset[str] | set[str] | list[str] | tuple[str, ...]) -> frozenset[str]:
    """Validate output formats ("tiff,geojson" or a collection) against the registry; "all" means all."""
    items = [f.strip() for f in formats.split(",")] if isinstance(formats, str) else [str(f) for f in formats]
    items = [f for f in items if f]
    known = format_names()
    if "all" in items:
        return frozenset(known)
    bad = sorted(set(items) - set(known))
    if bad or not items:
        close = "".join(did_you_mean(b, [*known, "all"]) for b in bad[:1])
        raise UsageError(
            f"output format(s) {', '.join(bad) or '(none)'} not understood{close}; "
            f"choose among {', '.join(sorted(known))} (comma-separated) or 'all'"
        )
    return frozenset(items)


register_writer(MaskTiffWriter())
register_writer(GeoJsonWriter())
register_writer(PreviewWriter())

DEFAULT_FORMATS = frozenset(format_names())  # what `segment` writes by default: every built-in format
register_writer(ZarrWriter())  # opt-in (--formats zarr, needs the zarr extra): after DEFAULT_FORMATS
register_writer(ProbsWriter())  # opt-in (--formats probs): the class probabilities
register_writer(ProbsZarrWriter())  # probs.zarr: added by OutputOptions when probs and zarr are both chosen
register_writer(PaletteTiffWriter())  # opt-in (--formats palette): mask.tif with the class colours as a palette
