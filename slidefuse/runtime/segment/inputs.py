"""Which slides a run covers and where each one's outputs go: folder scans, list files, output names."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from slidefuse.errors import SlideNotFound, UsageError

log = logging.getLogger(__name__)

# File extensions scanned for in folders (case-insensitive). `.tif`/`.tiff` include OME-TIFF.
SLIDE_EXTENSIONS = (".svs", ".ndpi", ".mrxs", ".scn", ".tif", ".tiff", ".vms", ".vmu", ".bif", ".svslide")


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
    ex = exclude.resolve() if exclude is not None else None
    out = []
    for p in sorted(folder.rglob("*")):
        if not _is_slide_file(p):
            continue
        if ex is not None and (p.resolve() == ex or ex in p.resolve().parents):
            continue
        out.append(p)
    return out


def read_list_file(list_file: Path) -> list[Path]:
    """Paths in a text file, one per line; blank lines and `#` comments are ignored; relative paths are
    relative to the list file's folder."""
    if not list_file.is_file():
        raise SlideNotFound(f"{list_file}: no such list file; pass a text file with one slide path per line")
    out = []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        entry = line.split("#", 1)[0].strip() if line.lstrip().startswith("#") else line.strip()
        if not entry:
            continue
        p = Path(entry).expanduser()
        out.append(p if p.is_absolute() else list_file.parent / p)
    return out


def collect_slides(
    inputs: Sequence[Path], list_file: Path | None = None, exclude: Path | None = None
) -> list[Path]:
    """Expand slide files, folders (scanned recursively for SLIDE_EXTENSIONS) and a list file into slide
    paths, in order, without repeats. Paths that do not exist are kept: they fail alone when processed.
    Raises UsageError when nothing is given, or when the given folders hold no slide at all."""
    given = [Path(p) for p in inputs]
    if list_file is not None:
        given += read_list_file(Path(list_file))
    if not given:
        raise UsageError("no slides given; pass slide files or folders, or --list FILE")
    out: list[Path] = []
    seen: set[Path] = set()
    empty_folders = []
    for p in given:
        found = scan_folder(p, exclude) if p.is_dir() else [p]
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
    return out


def output_dirs(slides: Sequence[Path], out_root: Path) -> list[Path]:
    """OUT/<stem> for each slide; when two slides share a stem, the later ones get their parent folder's
    name as a prefix (then a counter), so no slide overwrites another's outputs."""
    used: set[str] = set()
    out = []
    for s in slides:
        name = slide_stem(s)
        if name in used:
            name = f"{s.parent.name}_{name}" if s.parent.name else name
            base, k = name, 2
            while name in used:
                name, k = f"{base}_{k}", k + 1
        used.add(name)
        out.append(Path(out_root) / name)
    return out


