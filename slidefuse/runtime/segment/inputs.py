"""Which slides a run covers and where each one's outputs go: folder scans, list files, output names.

A list file (`--list`) is plain text, one slide path per line, or a CSV with a header naming a `path` column
and optional `mpp` (that slide's pixel size, um/px), `out_name` (its output folder under OUT) and `roi` (its
regions of interest: a QuPath GeoJSON export or a mask image, see `runtime.roi`) columns.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from slidefuse.errors import SlideNotFound, UsageError
from slidefuse.runtime.types import RUN_LOG

log = logging.getLogger(__name__)

# File extensions scanned for in folders (case-insensitive). `.tif`/`.tiff` include OME-TIFF.
SLIDE_EXTENSIONS = (".svs", ".ndpi", ".mrxs", ".scn", ".tif", ".tiff", ".vms", ".vmu", ".bif", ".svslide")
MAX_LISTED = 20  # unrecognised files named in the "skipped" warning (then a count)
DICOM_SUFFIX = ".dcm"  # a folder holding such files is one DICOM WSI slide (see runtime.slide.dicom)


def slide_stem(path: Path) -> str:
    """Output folder name of a slide: its file name without the extension (and without `.ome` for
    OME-TIFF)."""
    name = path.name
    low = name.lower()
    for ext in (".ome.tiff", ".ome.tif", *SLIDE_EXTENSIONS):
        if low.endswith(ext):
            return name[: -len(ext)] or name
    return path.stem or name


def _is_slide_file(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(SLIDE_EXTENSIONS) and not p.name.startswith(".")


def scan_folder(folder: Path, exclude: Path | None = None) -> list[Path]:
    """Slide files under `folder` (recursive, sorted), by extension; files under `exclude` (the output
    folder) are left out."""
    return _scan(folder, exclude)[0]


def _scan(folder: Path, exclude: Path | None) -> tuple[list[Path], list[Path]]:
    """(slides, other files) under `folder`, sorted. A folder holding DICOM files (`.dcm` with the DICOM
    preamble) is one DICOM WSI slide; any other `.dcm` file is an ordinary unrecognised file. Hidden files,
    files under `exclude`, what slidefuse wrote (see `_Written`) and the data files of a MIRAX slide (the folder
    beside `X.mrxs` named `X`) are neither."""
    from slidefuse.runtime.slide.dicom import is_dicom_file

    ex = exclude.resolve() if exclude is not None else None
    written = _Written()
    slides: list[Path] = []
    others = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        if ex is not None and (p.resolve() == ex or ex in p.resolve().parents):
            continue
        if written.by_slidefuse(p, folder):
            continue
        if p.suffix.lower() == DICOM_SUFFIX and is_dicom_file(p):
            if p.parent not in slides:
                slides.append(p.parent)  # the series' folder is the slide
        elif _is_slide_file(p):
            slides.append(p)
        elif not _in_mirax_data(p, folder):
            others.append(p)
    if written.skipped:
        log.info("%s: skipped %d file(s) written by slidefuse (outputs of an earlier run)", folder, written.skipped)
    return slides, others


class _Written:
    """Recognises what slidefuse wrote in a scanned folder: every file under an output folder (a folder holding
    a slidefuse run.json), and each file a slide's slidefuse report.json (beside it) lists among its outputs."""

    def __init__(self) -> None:
        self.run_roots: dict[Path, bool] = {}  # folder -> whether it holds a slidefuse run.json
        self.outputs: dict[Path, set[str]] = {}  # folder -> file names its slidefuse report.json lists
        self.skipped = 0

    def by_slidefuse(self, p: Path, top: Path) -> bool:
        found = p.name in self._listed(p.parent) or any(self._is_run_root(d) for d in _up_to(p.parent, top))
        self.skipped += found
        return found

    def _is_run_root(self, folder: Path) -> bool:
        if folder not in self.run_roots:
            self.run_roots[folder] = _has_format(folder / RUN_LOG, b"slidefuse-run/")
        return self.run_roots[folder]

    def _listed(self, folder: Path) -> set[str]:
        if folder not in self.outputs:
            self.outputs[folder] = _report_outputs(folder)
        return self.outputs[folder]


def _up_to(folder: Path, top: Path) -> list[Path]:
    """`folder` and its parents up to `top` (included)."""
    out = [folder]
    while out[-1] != top and top in out[-1].parents:
        out.append(out[-1].parent)
    return out


def _has_format(path: Path, prefix: bytes) -> bool:
    """Whether the JSON file `path` starts with slidefuse's `{"format": "<prefix>...` (read: its first KiB)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError:
        return False
    return re.match(rb'\s*\{\s*"format"\s*:\s*"' + re.escape(prefix), head) is not None


def _report_outputs(folder: Path) -> set[str]:
    """File names the slidefuse report.json in `folder` lists as its outputs (empty: none, or not slidefuse's)."""
    from slidefuse.runtime.outputs.report import REPORT, read_report

    if not (folder / REPORT).is_file():
        return set()
    report = read_report(folder)
    if report is None or not str(report.get("format", "")).startswith("slidefuse-report/"):
        return set()
    outputs = report.get("outputs")
    listed = outputs.values() if isinstance(outputs, dict) else []
    return {str(o.get("file")) for o in listed if isinstance(o, dict)} | {REPORT}


def is_dicom_folder(p: Path) -> bool:
    """Whether the folder `p` is one DICOM WSI slide: it holds DICOM files (not in sub-folders)."""
    from slidefuse.runtime.slide.dicom import is_dicom

    return p.is_dir() and is_dicom(p)


def _in_mirax_data(p: Path, folder: Path) -> bool:
    """Whether `p` lies in a MIRAX slide's data folder (`X/` beside `X.mrxs`) under `folder`."""
    for d in p.parents:
        if d == folder or not d.name:
            return False
        if d.with_name(d.name + ".mrxs").is_file():
            return True
    return False


@dataclass(frozen=True)
class ListEntry:
    """One slide of a list file, with its own options (CSV columns)."""

    path: Path  # the slide (a relative path is relative to the list file's folder)
    mpp: float | None = None  # this slide's pixel size, um/px: wins over the file's, mpp and override_mpp
    out_name: str | None = None  # its output folder under OUT (default: the slide's stem)
    roi: Path | None = None  # its regions of interest file (relative: to the list file's folder); None: whole slide
    line: int = field(default=0, compare=False)  # its line in the list file (0: unknown)


@dataclass(frozen=True)
class BadRow:
    """A row of a list file that cannot be run: it fails alone (a failed entry in run.json), the others go on."""

    slide: Path  # `LIST:LINE`: the row's own name in run.json (never that of a slide another row runs)
    line: int  # its (first) line in the list file
    error: str  # one line: `LIST, line N: what is wrong; the fix`


LIST_COLUMNS = ("path", "mpp", "out_name", "roi")
# names slidefuse itself uses at OUT's top level (with .run and *.lock): the run log and the cohort table
RESERVED_NAMES = (RUN_LOG, "summary.csv", "summary.parquet")
MAX_NAME = 200  # characters of an output folder name (file systems allow 255 bytes, with room for temporaries)


def out_name_problem(name: str) -> str | None:
    """Why `name` cannot be a slide's output folder under OUT (None: it can): the one rule for a list's out_name
    and the API's `name`. Not text (NUL, a line break or another control character, bytes that are not UTF-8), not
    a plain folder name, hidden or reserved for slidefuse's own files (`run.json`, `.run`, `*.lock`), or too long
    (characters, or bytes in the file system's encoding)."""
    text = _text_problem(name)
    if text is not None:
        return text
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "holds a control character; remove it"
    if not name or Path(name).name != name or "\\" in name or name in (".", ".."):
        return "is not a plain folder name; give a name without '/'"
    if name.startswith(".") or name.lower() in RESERVED_NAMES or name.lower().endswith(".lock"):
        return ("is reserved for slidefuse's own files (run.json, summary.csv, .run, names starting with '.' or "
                "ending in '.lock'); choose another name")
    try:
        encoded = os.fsencode(name)
    except UnicodeError:
        return "cannot be a file name here (characters the file system's encoding lacks); choose another name"
    if len(name) > MAX_NAME or len(encoded) > MAX_NAME:
        return f"has {len(name)} characters ({len(encoded)} bytes), over the limit of {MAX_NAME}; choose a shorter name"
    return None


def check_out_name(name: str, field: str = "out_name") -> None:
    """Raise UsageError (naming `field`) when `name` cannot be a slide's output folder (`out_name_problem`)."""
    problem = out_name_problem(name)
    if problem is not None:
        raise UsageError(f"{field} {name!r} {problem}", field=field)


def _text_problem(value: str) -> str | None:
    """Why a list cell is not usable text: a NUL byte, a line break, or bytes that are not UTF-8."""
    if "\x00" in value:
        return "holds a NUL byte; remove it"
    if "\n" in value or "\r" in value:
        return "holds a line break; put it on one line"
    if any("\udc80" <= c <= "\udcff" for c in value):
        return "is not UTF-8 text; save the list as UTF-8"
    return None


def read_list_file(list_file: Path) -> list[Path]:
    """Paths in a list file (see `read_slide_list`); relative paths are relative to the list file's folder."""
    return [e.path for e in read_slide_list(list_file)]


def read_slide_list(list_file: Path) -> list[ListEntry]:
    """The entries of a list file: a text file with one path per line (blank lines and `#` comments
    ignored), or a CSV whose header names a `path` column and optionally `mpp`, `out_name` and `roi`. Raises
    UsageError naming the file and line of the first bad row (`read_slide_rows` keeps the others)."""
    entries, bad = read_slide_rows(list_file)
    if bad:
        raise UsageError(bad[0].error)
    return entries


def read_slide_rows(list_file: Path) -> tuple[list[ListEntry], list[BadRow]]:
    """(good entries, bad rows) of a list file, each bad row with a one-line reason naming the file and line.
    Raises SlideNotFound without the file and UsageError for a header with unknown columns (no row can be
    read then)."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise SlideNotFound(f"{list_file}: no such list file; pass a text file with one slide path per line "
                            "or a CSV with a 'path' column")
    text = list_file.read_bytes().decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    rows = list(_rows(text))
    header = [c.strip().lower() for c in rows[0][1]] if rows and isinstance(rows[0][1], list) else []
    if "path" not in header:
        return _plain_rows(list_file, text)
    unknown = sorted(set(header) - set(LIST_COLUMNS))
    if unknown:
        raise UsageError(f"{list_file}: unknown column(s) {', '.join(unknown)}; a slide list CSV has the columns "
                         f"{', '.join(LIST_COLUMNS)} (only 'path' is required)")
    entries: list[ListEntry] = []
    bad: list[BadRow] = []
    names: dict[str, int] = {}
    for n, row in rows[1:]:
        try:
            if isinstance(row, str):
                raise UsageError(f"{list_file}, line {n}: {row}; fix the row")
            entry = _csv_entry(list_file, n, dict(zip(header, (c.strip() for c in row), strict=False)))
            if entry.out_name is not None and entry.out_name in names:
                raise UsageError(f"{list_file}, line {n}: out_name {entry.out_name} is already given to the slide "
                                 f"on line {names[entry.out_name]}; give each slide its own")
        except UsageError as exc:
            bad.append(BadRow(Path(f"{list_file}:{n}"), n, str(exc)))
            continue
        if entry.out_name is not None:
            names[entry.out_name] = n
        entries.append(entry)
    return entries, bad


def _rows(text: str) -> Iterator[tuple[int, list[str] | str]]:
    """(first line number, cells) of each CSV row that is neither blank nor a `#` comment; cells are the reason
    instead for a row the CSV reader cannot read (e.g. a cell over its size limit)."""
    reader = csv.reader(text.splitlines(keepends=True))
    while True:
        first = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield first, f"cannot be read as CSV ({exc})"
            continue
        if any(c.strip() for c in row) and not row[0].lstrip().startswith("#"):
            yield first, row


def _plain_rows(list_file: Path, text: str) -> tuple[list[ListEntry], list[BadRow]]:
    """A plain list: one path per line, blank lines and `#` comments ignored."""
    entries, bad = [], []
    for n, line in enumerate(text.split("\n"), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        problem = _text_problem(entry)
        if problem is not None:
            bad.append(BadRow(Path(f"{list_file}:{n}"), n, f"{list_file}, line {n}: the path {problem}"))
        else:
            entries.append(ListEntry(_relative_to(list_file, entry), line=n))
    return entries, bad


def _relative_to(list_file: Path, entry: str) -> Path:
    p = Path(entry).expanduser()
    return p if p.is_absolute() else list_file.parent / p


def _csv_entry(list_file: Path, line: int, row: Mapping[str, str]) -> ListEntry:
    """One CSV row as a ListEntry; errors name the file and line."""
    where = f"{list_file}, line {line}"
    for column, value in row.items():
        problem = _text_problem(value)
        if problem is not None:
            raise UsageError(f"{where}: the {column} cell {problem}")
    if not row.get("path"):
        raise UsageError(f"{where}: no path; every row needs the slide's path")
    mpp = None
    if row.get("mpp"):
        try:
            mpp = float(row["mpp"])
        except ValueError:
            mpp = math.nan
        if not (math.isfinite(mpp) and mpp > 0):
            raise UsageError(f"{where}: mpp {row['mpp']!r} is not a positive number of microns per pixel; "
                             "fix it or leave the cell empty to use the file's")
    name = row.get("out_name") or None
    if name is not None:
        problem = out_name_problem(name)
        if problem is not None:
            raise UsageError(f"{where}: out_name {name!r} {problem}")
    roi = _relative_to(list_file, row["roi"]) if row.get("roi") else None
    if roi is not None and not roi.is_file():
        raise UsageError(f"{where}: roi {row['roi']!r}: no such file ({roi}); give the slide's regions file (a QuPath "
                         "GeoJSON export or a mask image), or leave the cell empty for the whole slide")
    return ListEntry(_relative_to(list_file, row["path"]), mpp, name, roi, line)


def collect_slides(
    inputs: Sequence[Path], list_file: Path | None = None, exclude: Path | None = None
) -> list[Path]:
    """Expand slide files, folders (scanned recursively for SLIDE_EXTENSIONS) and a list file into slide
    paths, in order, without repeats. Paths that do not exist are kept: they fail alone when processed; so do
    a list's bad rows (`read_slide_rows`), which are left out here. Raises UsageError when nothing is given,
    or when the given folders hold no slide at all. Files in the scanned folders that are not slides are
    listed in one warning ("skipped: N files not recognised as slides: ..."), never dropped silently."""
    given = [Path(p) for p in inputs]
    if list_file is not None:
        given += [e.path for e in read_slide_rows(Path(list_file))[0]]
    return expand_inputs(given, exclude)


def slide_key(path: Path) -> Path:
    """One slide's identity among the inputs: its resolved path (absolute when it does not exist)."""
    try:
        return path.resolve() if path.exists() else path.absolute()
    except (OSError, RuntimeError):  # a symlink loop
        return path.absolute()


def expand_inputs(given: Sequence[Path], exclude: Path | None = None) -> list[Path]:
    """`collect_slides` of paths already read: files kept, folders scanned, repeats dropped (first kept)."""
    if not given:
        raise UsageError("no slides given; pass slide files or folders, or list_file=FILE")
    out: list[Path] = []
    seen: set[Path] = set()
    empty_folders, unrecognised = [], []
    for p in given:
        found, others = _scan(p, exclude) if p.is_dir() and not is_dicom_folder(p) else ([p], [])
        unrecognised += others
        if p.is_dir() and not found:
            empty_folders.append(p)
        for s in found:
            key = slide_key(s)
            if key not in seen:
                seen.add(key)
                out.append(s)
    if not out:
        raise UsageError(
            f"no slides found in {', '.join(str(f) for f in empty_folders)}; "
            f"slide files end in {' '.join(SLIDE_EXTENSIONS)}"
        )
    for f in empty_folders:
        log.warning("%s: no slide files in this folder (extensions %s)", f, " ".join(SLIDE_EXTENSIONS))
    if unrecognised:
        shown = ", ".join(str(u) for u in unrecognised[:MAX_LISTED])
        more = f" and {len(unrecognised) - MAX_LISTED} more" if len(unrecognised) > MAX_LISTED else ""
        log.warning("skipped: %d file(s) not recognised as slides: %s%s (slide files end in %s)",
                    len(unrecognised), shown, more, " ".join(SLIDE_EXTENSIONS))
    return out


def check_out_folder(out_root: Path) -> None:
    """Refuse an output folder that is, or is inside, a model bundle or the package's data folder: outputs
    written there would change the bundle (and the shipped demonstration model); see `paths.check_out_path`."""
    from slidefuse.paths import check_out_path

    check_out_path(out_root)


def _owner(out_dir: Path) -> str | None:
    """The resolved path of the slide whose outputs `out_dir` holds (from its report's skip key), or None."""
    from slidefuse.runtime.outputs.report import read_report
    from slidefuse.runtime.segment.skip import recorded_key

    key = recorded_key(read_report(out_dir))
    slide = key.get("slide") if key is not None else None
    return str(slide.get("path")) if isinstance(slide, dict) and slide.get("path") else None


def output_dirs(slides: Sequence[Path], out_root: Path, names: Mapping[Path, str] | None = None) -> list[Path]:
    """OUT/<stem> for each slide. A folder belongs to one slide file: when two slides of the batch share a
    stem, or OUT/<stem> already holds another slide file's outputs (a same-named slide from another folder,
    recorded in its report.json), the slide gets its parent folder's name as a prefix (then a counter), so
    no slide overwrites another's outputs and each keeps its own folder on reruns. `names`: folder names
    chosen for some slides (a list's `out_name`), kept as given; one that holds another slide's outputs is
    refused."""
    from slidefuse.runtime.segment.skip import resolved

    chosen = dict(names or {})
    used: set[str] = set(chosen.values())
    out = []
    for s in slides:
        real = str(resolved(s))
        if s in chosen:
            out.append(_chosen_dir(s, Path(out_root) / chosen[s], real))
            continue
        stem = slide_stem(s)[:MAX_NAME]
        prefixed = (f"{s.parent.name}_{stem}" if s.parent.name else stem)[:MAX_NAME - 6]
        candidates = [stem, prefixed] + [f"{prefixed}_{k}" for k in range(2, 10_000)]
        for name in candidates:
            if out_name_problem(name) is not None:  # e.g. a slide `run.json.tif`: OUT's own names stay OUT's
                continue
            owner = None if name in used else _owner(Path(out_root) / name)
            if name not in used and owner in (None, real):
                break
        if name != stem:
            log.info("%s: outputs go to %s (%s is taken by another slide file)", s, name, stem)
        used.add(name)
        out.append(Path(out_root) / name)
    return out


def _chosen_dir(slide: Path, out_dir: Path, real: str) -> Path:
    owner = _owner(out_dir)
    if owner not in (None, real):
        raise UsageError(f"{slide}: out_name {out_dir.name} already holds the outputs of {owner}; choose another "
                         "out_name or another out=FOLDER")
    return out_dir


def list_overrides(list_file: Path | None) -> dict[Path, ListEntry]:
    """The list file's good entries that carry an option of their own (mpp, out_name or roi), by path as listed."""
    if list_file is None:
        return {}
    return {e.path: e for e in read_slide_rows(Path(list_file))[0] if e.mpp is not None or e.out_name or e.roi}
