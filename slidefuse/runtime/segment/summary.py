"""`OUT/summary.csv`: the cohort table, one row per slide of the run log, joined with each slide's report.json.

Every row comes from one run-log entry (`runlog.read_run_log`: the slide, its status and error, its seconds);
for an "ok" or "skipped" slide the row is completed from its report.json (tissue and class areas, tiles, what
ran). A failed slide's row leaves the report's columns empty, even where an older report.json is still there.

Columns are a registry (`COLUMNS`): each entry names its header, kind (text, int, float), unit and meaning,
and reads the run-log entry, the report, or both (the entry's value wins; the report's fills in where the entry
has none). A per-class entry (`ClassColumns`) gives one column per class of the slides' bundles: the union over
the table, in the order first seen, empty where a slide's bundle lacks the class. Adding a column is one entry.

The table is rebuilt from the run log after every record, under run.json's lock (`RunLog._save`). Reports are
parsed once per process and cached by (path, mtime_ns, size, inode), so a batch of thousands of slides does not
re-read every report on every record.

CSV: RFC 4180 (comma-separated, double quotes around a cell that holds a comma, quote or line break, quotes
doubled, CRLF line ends, UTF-8). A text cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return is
prefixed with a single quote (`'`), as OWASP recommends against formula injection, so a spreadsheet shows it as
text instead of running it. Numbers are written as Python writes them (`0.0574`, `7e-06`), never quoted.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import threading
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from slidefuse.atomic import atomic_path, write_text_atomic
from slidefuse.runtime.outputs.report import REPORT, read_report
from slidefuse.runtime.types import Status

logger = logging.getLogger(__name__)

__all__ = ["COLUMNS", "SUMMARY", "ClassColumns", "Column", "SummaryTable", "column_name", "csv_text",
           "rebuild_after_save", "summary_table", "write_summary_csv", "write_summary_parquet"]

SUMMARY = "summary.csv"  # the cohort table in the output root
Cell = str | int | float | None
Kind = Literal["text", "int", "float"]
Getter = Callable[[Mapping[str, Any]], Cell]
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # OWASP's list of cell starts a spreadsheet may run
LIST_SEPARATOR = ";"  # between the names of a list cell (qc_flags, region_names)
_WITH_REPORT = (Status.OK, Status.SKIPPED)  # statuses whose report.json belongs to the row


def _dig(d: Any, *keys: str) -> Any:
    """d[k1][k2]...; None where a level is missing or not a JSON object (a damaged report gives empty cells)."""
    for k in keys:
        if not isinstance(d, Mapping):
            return None
        d = d.get(k)
    return d


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _count(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _names(items: Any) -> list[str]:
    """Names of a list (strings, or objects with a "name", "id" or "flag") or of a JSON object (its keys)."""
    if isinstance(items, Mapping):
        return [str(k) for k in items]
    if not isinstance(items, list):
        return []
    out = []
    for it in items:
        if isinstance(it, Mapping):
            it = next((it[k] for k in ("name", "id", "flag") if it.get(k) is not None), None)
        if it is not None:
            out.append(str(it))
    return out


def _region_list(report: Mapping[str, Any]) -> list[Any] | None:
    """report.json's regions of interest: the list under `regions.regions` (None without regions)."""
    section = report.get("regions")
    regions = section.get("regions") if isinstance(section, Mapping) else None
    return regions if isinstance(regions, list) else None


def _region_count(report: Mapping[str, Any]) -> int | None:
    regions = _region_list(report)
    return None if regions is None else len(regions)


def _joined(items: Any) -> str | None:
    names = _names(items)
    return LIST_SEPARATOR.join(names) if names else None


@dataclass(frozen=True)
class Column:
    """One column: `entry` reads the run-log entry, `report` the slide's report.json (the entry's value wins)."""

    name: str  # header
    kind: Kind  # cell type: text, int or float (Parquet's column type)
    unit: str  # unit of a number ("" for none)
    doc: str  # what it holds (docs/formats.md lists every column)
    entry: Getter | None = None
    report: Getter | None = None


@dataclass(frozen=True)
class ClassColumns:
    """One column per class, `<prefix>_<class column name>`; `report` maps report.json to {class name: value}."""

    prefix: str  # header prefix
    kind: Kind
    unit: str
    doc: str
    report: Callable[[Mapping[str, Any]], dict[str, Cell]]


def _class_areas(report: Mapping[str, Any]) -> dict[str, Cell]:
    areas = report.get("areas")
    if not isinstance(areas, Mapping):
        return {}
    return {str(name): _number(_dig(a, "area_mm2")) for name, a in areas.items()}


def _class_fractions(report: Mapping[str, Any]) -> dict[str, Cell]:
    """Area of the class / tissue area; empty for class 0 (background: it holds the slide outside tissue too)."""
    areas, tissue = report.get("areas"), _number(_dig(report, "tissue", "area_mm2"))
    if not isinstance(areas, Mapping):
        return {}
    out: dict[str, Cell] = {}
    for name, a in areas.items():
        area = _number(_dig(a, "area_mm2"))
        out[str(name)] = area / tissue if area is not None and tissue and _dig(a, "index") != 0 else None
    return out


def _decode_errors(report: Mapping[str, Any]) -> Cell:
    return _count(_dig(report, "slide", "decode_errors", "count"))


COLUMNS: tuple[Column | ClassColumns, ...] = (
    Column("slide", "text", "", "the slide file, as the run log names it", entry=lambda e: _text(e.get("slide"))),
    Column("status", "text", "", "ok, failed, skipped or claim_lost (see run.json)",
           entry=lambda e: _text(e.get("status"))),
    Column("error", "text", "", "the one-line reason of a failed slide; empty otherwise",
           entry=lambda e: _text(e.get("error"))),
    Column("tissue_mm2", "float", "mm²", "tissue found on the slide's thumbnail",
           report=lambda r: _number(_dig(r, "tissue", "area_mm2"))),
    ClassColumns("area_mm2", "float", "mm²", "area of the class in the mask", _class_areas),
    ClassColumns("fraction", "float", "", "area of the class / tissue_mm2 (empty for class 0, background)",
                 _class_fractions),
    Column("tiles_run", "int", "tiles", "tiles the model ran on",
           entry=lambda e: _count(_dig(e, "tiles", "run")), report=lambda r: _count(_dig(r, "tile_counts", "run"))),
    Column("tiles_tissue", "int", "tiles", "tiles that touch tissue",
           entry=lambda e: _count(_dig(e, "tiles", "tissue")),
           report=lambda r: _count(_dig(r, "tile_counts", "tissue"))),
    Column("seconds", "float", "s", "time the slide took in the run recorded (for a skipped slide: the check)",
           entry=lambda e: _number(e.get("seconds"))),
    Column("backend", "text", "", "the backend that ran (report.json's backend.backend)",
           report=lambda r: _text(_dig(r, "backend", "backend"))),
    Column("precision", "text", "", "what the backend computed in (fp32, fp16, bf16, int8, ...)",
           report=lambda r: _text(_dig(r, "backend", "precision"))),
    Column("model_digest", "text", "", "the bundle's digest (sha256)",
           report=lambda r: _text(_dig(r, "bundle", "digest"))),
    Column("decode_errors", "int", "tiles", "stored tiles the decoders reported as corrupt",
           entry=lambda e: _count(e.get("decode_errors")), report=_decode_errors),
    Column("qc_flags", "text", "", f"quality-control flags of report.json's qc section, '{LIST_SEPARATOR}'-separated",
           report=lambda r: _joined(_dig(r, "qc", "flags"))),
    Column("regions", "int", "regions", "regions of interest the slide was restricted to (report.json's "
           "regions.regions)", report=lambda r: _region_count(r)),
    Column("region_names", "text", "", f"their names or ids, '{LIST_SEPARATOR}'-separated",
           report=lambda r: _joined(_region_list(r))),
)


def column_name(class_name: str, index: int = 0) -> str:
    """A class name as part of a column header: accents dropped, lower case, every run of other characters than
    a-z and 0-9 one underscore, no leading or trailing underscore; `class<index>` when nothing is left."""
    ascii_name = unicodedata.normalize("NFKD", class_name).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^0-9a-z]+", "_", ascii_name.lower()).strip("_") or f"class{index}"


def _class_keys(report: Mapping[str, Any]) -> dict[str, str]:
    """report class name -> column name; a name that collides with an earlier class's gets `_<index>`."""
    areas = report.get("areas")
    out: dict[str, str] = {}
    for i, name in enumerate(areas if isinstance(areas, Mapping) else ()):
        key = column_name(str(name), i)
        out[str(name)] = f"{key}_{i}" if key in out.values() else key
    return out


@dataclass(frozen=True)
class _ReportCells:
    """What one report.json gives the table: the report-side cells and the class columns it has."""

    cells: dict[str, Cell]  # column header -> value, for every report-reading column
    classes: tuple[str, ...]  # class column names, in the report's order


def _report_cells(report: Mapping[str, Any]) -> _ReportCells:
    cells: dict[str, Cell] = {}
    keys = _class_keys(report)
    for col in COLUMNS:
        if isinstance(col, ClassColumns):
            for name, v in col.report(report).items():
                if name in keys:
                    cells[f"{col.prefix}_{keys[name]}"] = v
        elif col.report is not None:
            cells[col.name] = col.report(report)
    return _ReportCells(cells, tuple(keys.values()))


_cache: dict[str, tuple[tuple[int, int, int], _ReportCells]] = {}  # report path -> (stamp, cells)
_cache_lock = threading.Lock()
_CACHE_MAX = 200_000  # reports kept; beyond, the cache starts afresh


def _cached_report(path: str) -> _ReportCells | None:
    """The cells of report.json at `path`, parsed once per version of the file; None when absent or unreadable."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
    with _cache_lock:
        hit = _cache.get(path)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    p = Path(path)
    report = read_report(p.parent) if p.name == REPORT else None
    if report is None:
        return None
    cells = _report_cells(report)
    with _cache_lock:
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[path] = (stamp, cells)
    return cells


def _report_path(entry: Mapping[str, Any]) -> str | None:
    """The report.json of an entry: its outputs' "report", else out_dir/report.json."""
    report = _dig(entry, "outputs", "report")
    if isinstance(report, str) and report:
        return report
    out_dir = entry.get("out_dir")
    return os.path.join(out_dir, REPORT) if isinstance(out_dir, str) and out_dir else None


@dataclass(frozen=True)
class SummaryTable:
    """The cohort table: `header` (column names in order), `kinds` (per column) and `rows` (one per slide)."""

    header: tuple[str, ...]
    kinds: tuple[Kind, ...]
    rows: tuple[tuple[Cell, ...], ...]


def _header(classes: Sequence[str]) -> tuple[tuple[str, ...], tuple[Kind, ...]]:
    names: list[str] = []
    kinds: list[Kind] = []
    for col in COLUMNS:
        if isinstance(col, ClassColumns):
            names += [f"{col.prefix}_{c}" for c in classes]
            kinds += [col.kind] * len(classes)
        else:
            names.append(col.name)
            kinds.append(col.kind)
    return tuple(names), tuple(kinds)


def summary_table(entries: Sequence[Mapping[str, Any]]) -> SummaryTable:
    """One row per run-log entry (in the run log's order), completed from the report.json of ok/skipped slides."""
    found: list[tuple[Mapping[str, Any], _ReportCells | None]] = []
    classes: dict[str, None] = {}  # union of class column names, first seen first
    for e in entries:
        path = _report_path(e) if e.get("status") in _WITH_REPORT else None
        rc = _cached_report(path) if path is not None else None
        if rc is not None:
            classes.update(dict.fromkeys(rc.classes))
        found.append((e, rc))
    header, kinds = _header(list(classes))
    entry_cols = {c.name: c.entry for c in COLUMNS if isinstance(c, Column) and c.entry is not None}
    getters = [(name, entry_cols.get(name)) for name in header]
    rows = []
    for e, rc in found:
        from_report = rc.cells if rc is not None else {}
        cells = [(get(e) if get is not None else None, name) for name, get in getters]
        rows.append(tuple(from_report.get(name) if v is None else v for v, name in cells))
    return SummaryTable(header, kinds, tuple(rows))


def _csv_cell(v: Cell) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return "'" + v if v.startswith(FORMULA_STARTS) else v
    return repr(v) if isinstance(v, float) else str(v)


def csv_text(table: SummaryTable) -> str:
    """The table as RFC 4180 CSV text (see the module docstring for the quoting rules)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    w.writerow(table.header)
    w.writerows([_csv_cell(v) for v in row] for row in table.rows)
    return buf.getvalue()


def write_summary_csv(out_root: Path, entries: Sequence[Mapping[str, Any]], path: Path | None = None) -> Path:
    """Write the table of `entries` to `path` (default OUT/summary.csv) atomically; returns the path."""
    return write_text_atomic(path or Path(out_root) / SUMMARY, csv_text(summary_table(entries)))


def write_summary_parquet(table: SummaryTable, path: Path) -> Path:
    """Write `table` as Parquet (typed columns: text as strings, int as int64, float as float64; text cells as they
    are, without the CSV's formula prefix) atomically; needs pyarrow (`slidefuse[parquet]`)."""
    from slidefuse.errors import require

    pa = require("pyarrow", "parquet", "writing the cohort table as Parquet")
    pq = require("pyarrow.parquet", "parquet", "writing the cohort table as Parquet")
    types = {"text": pa.string(), "int": pa.int64(), "float": pa.float64()}
    arrays = [pa.array([row[i] for row in table.rows], type=types[k]) for i, k in enumerate(table.kinds)]
    with atomic_path(Path(path)) as tmp:
        pq.write_table(pa.table(arrays, names=list(table.header)), str(tmp))
    return Path(path)


def rebuild_after_save(out_root: Path, entries: Sequence[Mapping[str, Any]]) -> None:
    """Rewrite OUT/summary.csv from the entries just written to run.json; a failure is a warning (the table is a
    view of the run log, rebuilt on the next record or by `slidefuse summary OUT`)."""
    try:
        write_summary_csv(out_root, entries)
    except OSError as exc:
        logger.warning("%s not rewritten this time (%s); `slidefuse summary %s` rebuilds it",
                       exc.filename or Path(out_root) / SUMMARY, exc.strerror or exc, out_root)
