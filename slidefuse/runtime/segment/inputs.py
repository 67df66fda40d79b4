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


def check_out_folder(out_root: Path) -> None:
    """Refuse an output folder that is, or is inside, a model bundle (a folder with manifest.json): outputs
    written there would change the bundle (and the shipped demonstration model)."""
    from slidefuse.runtime.bundle import MANIFEST
    from slidefuse.runtime.segment.skipkey import resolved

    real = resolved(out_root)
    for folder in (real, *real.parents):
        if (folder / MANIFEST).is_file():
            raise UsageError(f"--out {out_root}: is inside the model bundle {folder}; outputs must not change a "
                             "bundle: choose a folder outside it")


def _owner(out_dir: Path) -> str | None:
    """The resolved path of the slide whose outputs `out_dir` holds (from its report's skip key), or None."""
    from slidefuse.runtime.outputs.report import read_report
    from slidefuse.runtime.segment.skipkey import recorded_key

    key = recorded_key(read_report(out_dir))
    slide = key.get("slide") if key is not None else None
    return str(slide.get("path")) if isinstance(slide, dict) and slide.get("path") else None


def output_dirs(slides: Sequence[Path], out_root: Path) -> list[Path]:
    """OUT/<stem> for each slide. A folder belongs to one slide file: when two slides of the batch share a
    stem, or OUT/<stem> already holds another slide file's outputs (a same-named slide from another folder,
    recorded in its report.json), the slide gets its parent folder's name as a prefix (then a counter), so
    no slide overwrites another's outputs and each keeps its own folder on reruns."""
    from slidefuse.runtime.segment.skipkey import resolved

    used: set[str] = set()
    out = []
    for s in slides:
        real = str(resolved(s))
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
