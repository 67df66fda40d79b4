"""The exact skip key: which slide (by content), which bundle and which result-changing options made a slide's
outputs. A rerun skips a slide only when every part of the key recorded in its report.json matches.

The API is small and stable (other runners, e.g. distributed ones, import it):

- `slide_identity(path) -> SlideIdentity`: resolved path, size, mtime_ns and a fast content fingerprint;
  refuses a path that is not a regular file without opening it (a FIFO would block).
- `result_key(bundle, options, identity) -> dict`: the JSON-able key recorded in report.json (`run.skip_key`).
- `why_rerun(report, key) -> str | None`: None when the report's key matches `key`, else the reason, in words.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slidefuse.errors import SlideReadError

KEY_VERSION = 1  # bumped when the key's meaning changes (older keys then never match)
FINGERPRINT_BYTES = 1 << 20  # bytes hashed at each end of the file
NUMERIC_BACKEND_OPTIONS = ("precision",)  # backend options that change the probabilities, not just speed


@dataclass(frozen=True)
class SlideIdentity:
    """A slide file as it is now: where it is, how big, when written and a hash of its telling parts."""

    path: str  # absolute path with symlinks resolved
    size: int  # bytes
    mtime_ns: int  # modification time, ns since the epoch
    fingerprint: str  # sha256 of the first and last MiB and of the TIFF directories (when a TIFF)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolved(path: str | os.PathLike[str]) -> Path:
    """`path` made absolute with symlinks resolved (as far as they exist)."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):  # a symlink loop: the absolute path is the best name there is
        return Path(path).absolute()


def _fingerprint(path: Path, size: int) -> str:
    from slidefuse.runtime.slide.tiffdir import read_directories

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            fh.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
            h.update(fh.read(FINGERPRINT_BYTES))
    for d in read_directories(path) or ():
        h.update(repr(d).encode())
    return h.hexdigest()


def _dicom_identity(folder: Path) -> SlideIdentity:
    """A DICOM WSI series folder: its .dcm files' total size, newest mtime and a hash of their names, sizes and
    first MiB."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".dcm" and p.is_file())
    stats = [f.stat() for f in files]
    h = hashlib.sha256()
    for f, st in zip(files, stats, strict=True):
        h.update(f"{f.name}:{st.st_size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(FINGERPRINT_BYTES))
    return SlideIdentity(str(resolved(folder)), sum(st.st_size for st in stats),
                         max(st.st_mtime_ns for st in stats), h.hexdigest())


def slide_identity(path: str | os.PathLike[str]) -> SlideIdentity:
    """The identity of the slide file at `path`. Raises SlideNotFound, or SlideReadError for a path that is
    not a regular readable file."""
    from slidefuse.runtime.slide.dicom import is_dicom
    from slidefuse.runtime.slide.reader import check_slide_file

    if Path(path).is_dir() and is_dicom(Path(path)):
        return _dicom_identity(Path(path))
    real = resolved(path)
    st = check_slide_file(Path(path))
    try:
        fingerprint = _fingerprint(real, st.st_size)
    except OSError as exc:
        raise SlideReadError(f"{path}: cannot be read ({exc.strerror}); check its permissions") from None
    return SlideIdentity(str(real), int(st.st_size), int(st.st_mtime_ns), fingerprint)


def result_key(bundle: Any, options: Any, identity: SlideIdentity) -> dict[str, Any]:
    """Everything that decides a slide's outputs, as JSON: the slide's identity, the bundle's digest and the
    options that change the result (pixel-size override, overlap in effect, tissue parameters, all tiles,
    mask pixel size, formats, backend and its numeric options).

    bundle: a `runtime.bundle.Bundle`; options: a `SegmentOptions`.
    """
    from slidefuse.runtime.segment.stages import effective_overlap

    backend_options = dict(options.backend_options)
    return {
        "version": KEY_VERSION,
        "slide": identity.to_dict(),
        "bundle": bundle.digest,
        "options": {
            "mpp": options.mpp,
            "tile": bundle.manifest.tile_size,
            "overlap": effective_overlap(bundle, options),
            "tissue": options.tissue.to_dict(),
            "all_tiles": bool(options.all_tiles),
            "mask_mpp": options.mask_mpp,
            "backend": options.backend,
            "backend_numerics": {k: backend_options[k] for k in NUMERIC_BACKEND_OPTIONS if k in backend_options},
        },
        "formats": sorted(options.formats),
    }


def recorded_key(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The skip key recorded in a report.json (None when absent)."""
    run = (report or {}).get("run")
    key = run.get("skip_key") if isinstance(run, dict) else None
    return key if isinstance(key, dict) else None


def _slide_change(old: Any, new: dict[str, Any]) -> str | None:
    if not isinstance(old, dict):
        return "the report records no slide identity"
    if old.get("path") != new["path"]:
        return f"the outputs are of another slide file ({old.get('path')})"
    changed = [f for f in ("size", "mtime_ns", "fingerprint") if old.get(f) != new[f]]
    return f"the slide file changed since ({', '.join(changed)})" if changed else None


def why_rerun(report: dict[str, Any] | None, key: dict[str, Any]) -> str | None:
    """None when `report` (a parsed report.json) records outputs made with `key`; else why the slide must be
    segmented again. A rerun asking for fewer formats than were written is not a reason."""
    old = recorded_key(report)
    if report is None:
        return "no report.json"
    if old is None or old.get("version") != key["version"]:
        return "its report.json has no skip key of this version (made by an older slidefuse)"
    slide = _slide_change(old.get("slide"), key["slide"])
    if slide is not None:
        return slide
    if old.get("bundle") != key["bundle"]:
        return "the outputs were made by another model bundle"
    opts_old: dict[str, Any] = old["options"] if isinstance(old.get("options"), dict) else {}
    changed = [f"{k} {opts_old.get(k)!r} -> {v!r}" for k, v in key["options"].items() if opts_old.get(k) != v]
    if changed:
        return "options changed: " + "; ".join(changed)
    missing = sorted(set(key["formats"]) - set(old.get("formats") or ()))
    if missing:
        return f"formats not written before: {', '.join(missing)}"
    return None
