"""Which slides a run covers and where each one's outputs go: folder scans, list files, output names.

A list file (`--list`) is plain text, one slide path per line, or a CSV with a header naming a `path` column
and optional `mpp` (that slide's pixel size, um/px) and `out_name` (its output folder under OUT) columns.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from slidefuse.errors import SlideNotFound, UsageError

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
    """(slides, other files) under `folder`, sorted. A folder holding `.dcm` files is one DICOM WSI slide.
    Hidden files, files under `exclude` and the data files of a MIRAX slide (the folder beside `X.mrxs`
    named `X`) are neither."""
    ex = exclude.resolve() if exclude is not None else None
    slides: list[Path] = []
    others = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        if ex is not None and (p.resolve() == ex or ex in p.resolve().parents):
            continue
        if p.suffix.lower() == DICOM_SUFFIX:
            if p.parent not in slides:
                slides.append(p.parent)  # the series' folder is the slide
        elif _is_slide_file(p):
            slides.append(p)
        elif not _in_mirax_data(p, folder):
            others.append(p)
    return slides, others


def is_dicom_folder(p: Path) -> bool:
    """Whether the folder `p` is one DICOM WSI slide: it holds `.dcm` files (not in sub-folders)."""
    return any(f.suffix.lower() == DICOM_SUFFIX and f.is_file() for f in p.iterdir())


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
    mpp: float | None = None  # this slide's pixel size, um/px: overrides the file's and --mpp
    out_name: str | None = None  # its output folder under OUT (default: the slide's stem)


LIST_COLUMNS = ("path", "mpp", "out_name")


def read_list_file(list_file: Path) -> list[Path]:
    """Paths in a list file (see `read_slide_list`); relative paths are relative to the list file's folder."""
    return [e.path for e in read_slide_list(list_file)]


def _meaningful_lines(text: str) -> list[tuple[int, str]]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip() if line.lstrip().startswith("#") else line.strip()
        if entry:
            out.append((n, entry))
    return out


def read_slide_list(list_file: Path) -> list[ListEntry]:
    """The entries of a list file: a text file with one path per line (blank lines and `#` comments
    ignored), or a CSV whose header names a `path` column and optionally `mpp` and `out_name`."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise SlideNotFound(f"{list_file}: no such list file; pass a text file with one slide path per line "
                            "or a CSV with a 'path' column")
    lines = _meaningful_lines(list_file.read_text(encoding="utf-8"))
    header = [c.strip().lower() for c in next(csv.reader([lines[0][1]]))] if lines else []
    if "path" not in header:
        return [ListEntry(_relative_to(list_file, entry)) for _, entry in lines]
    unknown = sorted(set(header) - set(LIST_COLUMNS))
    if unknown:
        raise UsageError(f"{list_file}: unknown column(s) {', '.join(unknown)}; a slide list CSV has the columns "
                         f"{', '.join(LIST_COLUMNS)} (only 'path' is required)")
    rows = csv.reader(io.StringIO("\n".join(entry for _, entry in lines[1:])))
    entries = [_csv_entry(list_file, n, dict(zip(header, (c.strip() for c in row), strict=False)))
               for (n, _), row in zip(lines[1:], rows, strict=True)]
    names = [e.out_name for e in entries if e.out_name]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"{list_file}: out_name {', '.join(twice)} given to more than one slide; give each its own")
    return entries


def _relative_to(list_file: Path, entry: str) -> Path:
    p = Path(entry).expanduser()
    return p if p.is_absolute() else list_file.parent / p


def _csv_entry(list_file: Path, line: int, row: Mapping[str, str]) -> ListEntry:
    """One CSV row as a ListEntry; errors name the file and line."""
    where = f"{list_file}, line {line}"
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
    if name is not None and (Path(name).name != name or name in (".", "..") or name.startswith(".")):
        raise UsageError(f"{where}: out_name {name!r} is not a plain folder name; give a name without '/'")
    return ListEntry(_relative_to(list_file, row["path"]), mpp, name)


def collect_slides(
    inputs: Sequence[Path], list_file: Path | None = None, exclude: Path | None = None
) -> list[Path]:
    """Expand slide files, folders (scanned recursively for SLIDE_EXTENSIONS) and a list file into slide
    paths, in order, without repeats. Paths that do not exist are kept: they fail alone when processed.
    Raises UsageError when nothing is given, or when the given folders hold no slide at all. Files in the
    scanned folders that are not slides are listed in one warning ("skipped: N files not recognised as
    slides: ..."), never dropped silently."""
    given = [Path(p) for p in inputs]
    if list_file is not None:
        given += read_list_file(Path(list_file))
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
            key = s.resolve() if s.exists() else s.absolute()
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
    """Refuse an output folder that is, or is inside, a model bundle (a folder with manifest.json): outputs
    written there would change the bundle (and the shipped demonstration model)."""
    from slidefuse.runtime.bundle import MANIFEST
    from slidefuse.runtime.segment.skip import resolved

    real = resolved(out_root)
    for folder in (real, *real.parents):
        if (folder / MANIFEST).is_file():
            raise UsageError(f"out={out_root}: is inside the model bundle {folder}; outputs must not change a "
                             "bundle: choose a folder outside it", field="out")


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
        stem = slide_stem(s)
        prefixed = f"{s.parent.name}_{stem}" if s.parent.name else stem
        candidates = [stem, prefixed] + [f"{prefixed}_{k}" for k in range(2, 10_000)]
        for name in candidates:
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
    """The list file's entries that carry an option of their own (mpp or out_name), by path as collected."""
    if list_file is None:
        return {}
    return {e.path: e for e in read_slide_list(Path(list_file)) if e.mpp is not None or e.out_name}
