"""What an output folder holds, as the viewer may serve it.

The viewer reads only what OUT's run log records: the slides (by their recorded path), each slide's output folder
`OUT/<name>` and, in it, the files that the run log's `outputs` and report.json's `outputs` records name. Every
other path (`..`, absolute paths, a symlink out of OUT, a file nobody recorded) is unknown to it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slidefuse.errors import UsageError
from slidefuse.runtime.segment.runlog import read_run_log

logger = logging.getLogger(__name__)

REPORT = "report.json"
PROBS_FILE = "probs.ome.tif"  # per-class probabilities (uint8 per class, the mask's size and pixel size)
SUMMARY_FILE = "summary.csv"  # the batch table, when the batch wrote one


@dataclass(frozen=True)
class SlideEntry:
    """One slide of the batch as the viewer shows it."""

    index: int  # position in the run log; the slide's id in URLs
    slide: str  # the slide path as recorded
    slide_path: Path | None  # the resolved slide file (None: the run log records none usable)
    status: str  # ok, failed, skipped (the run log's)
    error: str | None  # the run log's one-line reason for a failure
    name: str  # the output folder's name under OUT
    out_dir: Path | None  # OUT/<name>, resolved, inside OUT (None: absent or outside OUT)
    report: dict[str, Any] | None  # report.json (None: absent or unreadable)
    files: dict[str, Path] = field(default_factory=dict)  # recorded file name -> resolved path inside out_dir
    decode_errors: int = 0  # tiles the decoders reported corrupt

    @property
    def display_name(self) -> str:
        return Path(self.slide).name or self.name

    def file(self, name: str) -> Path | None:
        """The recorded file called `name` (a plain file name) in this slide's folder, or None."""
        return self.files.get(name)


def _inside(path: Path, root: Path) -> Path | None:
    """`path` resolved (symlinks followed) when it lies inside `root` (resolved) and exists; else None."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return real if real == root or root in real.parents else None


def _read_report(out_dir: Path) -> dict[str, Any] | None:
    p = out_dir / REPORT
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        if p.exists():
            logger.warning("%s is unreadable (%s); the slide is listed without it", p, exc)
        return None
    return d if isinstance(d, dict) else None


def _recorded_names(entry: dict[str, Any], report: dict[str, Any] | None) -> set[str]:
    """Plain file names that the run log entry's and report.json's `outputs` records name."""
    names: set[str] = set()
    for v in (entry.get("outputs") or {}).values() if isinstance(entry.get("outputs"), dict) else ():
        if isinstance(v, str):
            names.add(Path(v).name)
    outputs = (report or {}).get("outputs")
    for rec in outputs.values() if isinstance(outputs, dict) else ():
        if isinstance(rec, dict) and isinstance(rec.get("file"), str):
            names.add(rec["file"])
    qc = (report or {}).get("qc")
    if isinstance(qc, dict) and isinstance(qc.get("file"), str):
        names.add(qc["file"])
    if report is not None:
        names.add(REPORT)
    return {n for n in names if n and Path(n).name == n and n not in (".", "..")}


def _slide_path(entry: dict[str, Any], report: dict[str, Any] | None) -> Path | None:
    """The slide file: the run log's resolved `slide_key`, else the recorded path; None when neither exists."""
    for key in (entry.get("slide_key"), entry.get("slide"), ((report or {}).get("slide") or {}).get("path")):
        if isinstance(key, str) and key:
            p = Path(key)
            if p.exists():
                return p.resolve()
    return None


def _entry(index: int, e: dict[str, Any], root: Path) -> SlideEntry:
    name = Path(str(e.get("out_dir") or "")).name
    out_dir = _inside(root / name, root) if name and name not in (".", "..") else None
    if out_dir is not None and (out_dir == root or not out_dir.is_dir()):
        out_dir = None
    report = _read_report(out_dir) if out_dir is not None else None
    files: dict[str, Path] = {}
    if out_dir is not None:
        for n in sorted(_recorded_names(e, report)):
            p = _inside(out_dir / n, out_dir)
            if p is not None and p.is_file():
                files[n] = p
    de = e.get("decode_errors")
    return SlideEntry(index=index, slide=str(e["slide"]), slide_path=_slide_path(e, report), status=str(e["status"]),
                      error=e.get("error") if isinstance(e.get("error"), str) else None, name=name or str(index),
                      out_dir=out_dir, report=report, files=files,
                      decode_errors=de if isinstance(de, int) and not isinstance(de, bool) else 0)


@dataclass(frozen=True)
class Catalogue:
    """The slides of an output folder's run log, in the order they were first recorded."""

    root: Path  # OUT, resolved
    slides: tuple[SlideEntry, ...]
    summary: Path | None  # OUT/summary.csv when present

    def get(self, index: int) -> SlideEntry | None:
        return self.slides[index] if 0 <= index < len(self.slides) else None


def load_catalogue(out: Path) -> Catalogue:
    """Read OUT's run log and each slide's report.json. Raises UsageError when OUT is not a folder or holds no
    run log."""
    root = Path(out).expanduser()
    if not root.is_dir():
        raise UsageError(f"{out}: not a folder; give the --out folder of a `slidefuse segment` run")
    root = root.resolve()
    try:
        entries = read_run_log(root)
    except ValueError as exc:
        raise UsageError(f"{exc}; re-run `slidefuse segment` into this folder to rebuild it") from exc
    if not entries:
        raise UsageError(f"{out}: no run log (run.json) with any slide; give the --out folder of a "
                         "`slidefuse segment` run")
    summary = _inside(root / SUMMARY_FILE, root)
    return Catalogue(root=root, slides=tuple(_entry(i, e, root) for i, e in enumerate(entries)),
                     summary=summary if summary is not None and summary.is_file() else None)
