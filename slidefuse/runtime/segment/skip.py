"""Whether a slide runs: the exact skip key and the one decision every runner takes (`decide`).

The skip key says which slide (by content), which bundle and which result-changing options made a slide's
outputs; a rerun skips a slide only when every part of the key recorded in its report.json matches and the
output writers find their files current. The API is small and stable (every runner calls it: the batch
scheduler, the Ray driver and its workers):

- `slide_identity(path) -> SlideIdentity`: resolved path, size, mtime_ns and a fast content fingerprint;
  refuses a path that is not a regular file without opening it (a FIFO would block).
- `result_key(bundle, options, identity) -> dict`: the JSON-able key recorded in report.json (`run.skip_key`).
- `decide(slide, out_dir, bundle, options, since=...) -> Decision`: run it (and why), skip it, or leave it to
  the process that wrote its outputs during this batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from slidefuse.errors import SlidefuseError, SlideReadError, one_line
from slidefuse.runtime.bundle import Bundle
from slidefuse.runtime.outputs import outputs_current
from slidefuse.runtime.outputs.report import REPORT, read_report
from slidefuse.runtime.segment.options import SegmentOptions, effective_overlap
from slidefuse.runtime.types import Status

log = logging.getLogger(__name__)

KEY_VERSION = 2  # bumped when the key's meaning changes (older keys then never match)
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


def result_key(bundle: Bundle, options: SegmentOptions, identity: SlideIdentity) -> dict[str, Any]:
    """Everything that decides a slide's outputs, as JSON: the slide's identity, the bundle's digest and the
    options that change the result (pixel sizes given, overlap in effect, tissue parameters, all tiles,
    mask pixel size, formats, backend and its numeric options, the regions file's content, QC policy and methods)."""
    backend_options = dict(options.backend_options)
    return {
        "version": KEY_VERSION,
        "slide": identity.to_dict(),
        "bundle": bundle.digest,
        "options": {
            "mpp": options.mpp,
            "override_mpp": options.override_mpp,
            "tile": bundle.manifest.tile_size,
            "overlap": effective_overlap(bundle, options),
            "tissue": options.tissue.to_dict(),
            "all_tiles": bool(options.all_tiles),
            "mask_mpp": options.mask_mpp,
            "backend": options.backend,
            "backend_numerics": {k: backend_options[k] for k in NUMERIC_BACKEND_OPTIONS if k in backend_options},
            "roi": roi_key(options),
            "qc": qc_key(options.qc),
        },
        "formats": sorted(options.formats),
    }


def roi_key(options: SegmentOptions) -> dict[str, str] | None:
    """The regions file's part of the key: its content digest and the frame its coordinates are read in (None
    without regions, which matches keys recorded before regions existed). RoiError when it cannot be read."""
    if options.roi is None:
        return None
    from slidefuse.runtime.roi import file_digest

    return {"sha256": file_digest(options.roi), "frame": options.geojson_frame}


def qc_key(mode: str) -> dict[str, Any]:
    """The QC policy and, when QC runs, every method's version and thresholds (a change reruns the slide)."""
    from slidefuse.runtime.qc.methods import method_versions

    methods = method_versions() if mode != "off" else {}
    return {"mode": mode, "methods": json.loads(json.dumps(methods))}  # as report.json will hold it (tuples: lists)


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


def _key_change(report: dict[str, Any], key: dict[str, Any]) -> str | None:
    """None when `report` (a parsed report.json) records outputs made with `key`; else why the slide must be
    segmented again. A rerun asking for fewer formats than were written is not a reason."""
    old = recorded_key(report)
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


def _rerun_reason(slide: Path, out_dir: Path, bundle: Bundle, options: SegmentOptions) -> str | None:
    """None when `out_dir` holds this slide's complete, current outputs for exactly this skip key; else why it
    runs. A slide that cannot be examined runs (and fails there, alone, with its own message)."""
    try:
        key = result_key(bundle, options, slide_identity(slide))
    except (SlidefuseError, OSError) as exc:
        return one_line(exc)
    report = read_report(out_dir)
    if report is None:
        return "no readable report.json (never finished)"
    recorded = report.get("bundle")
    if not isinstance(recorded, dict) or recorded.get("digest") != bundle.digest:
        return "the outputs were made by another model bundle"
    return _key_change(report, key) or outputs_current(out_dir, report, options.outputs)


def _written_since(out_dir: Path, since: float | None) -> bool:
    """Whether this slide's report.json was written at or after `since` (seconds since the epoch)."""
    if since is None:
        return False
    try:
        return (out_dir / REPORT).stat().st_mtime >= since
    except OSError:
        return False


DecisionKind = Literal["run", "overwrite", "skip", "claimed", "refused"]


@dataclass(frozen=True)
class Decision:
    """Whether this process runs a slide, and why."""

    kind: DecisionKind  # "run": no complete, current outputs for this skip key; "overwrite": --overwrite;
    # "skip": complete before this batch; "claimed": written during this batch by another process (which records it);
    # "refused": cannot be claimed (e.g. a folder where its claim file goes): the slide fails with `reason`
    reason: str  # why, in words (e.g. "options changed: all_tiles False -> True")

    @property
    def run(self) -> bool:
        return self.kind in ("run", "overwrite")

    @property
    def status(self) -> Status | None:
        """The slide's status when it is not run (SKIPPED, CLAIMED or FAILED); None when it runs."""
        return {"skip": Status.SKIPPED, "claimed": Status.CLAIMED, "refused": Status.FAILED}.get(self.kind)


_BY_ANOTHER = Decision("claimed", "its outputs were written during this batch by another process sharing OUT")


def decide(slide: Path, out_dir: Path, bundle: Bundle, options: SegmentOptions, *,
           since: float | None = None, log_rerun: bool = True) -> Decision:
    """Whether `slide` runs into `out_dir` with `bundle` and `options`: the one rerun decision of every runner.

    It runs with `options.overwrite`, or when `out_dir` lacks complete outputs made from this very slide file
    (path, size, mtime, content fingerprint), by this bundle, with the same result-changing options (the skip
    key) and as the output writers are asked for now (`outputs.outputs_current`); otherwise it is skipped.
    since: the batch's start (seconds since the epoch): outputs written at or after it were written by another
    process sharing OUT during this batch, and are left to it ("claimed"), even with --overwrite. A slide with
    outputs that runs again has the reason logged, once: `log_rerun` False for a first look that is taken again
    once the slide is claimed (the decision that counts logs it). An `out_dir` that is a symbolic link is refused.
    """
    out_dir = Path(out_dir)
    if out_dir.is_symlink():
        return Decision("refused", f"{out_dir}: is a symbolic link (to {os.readlink(out_dir)}), so the slide's "
                                   "outputs would land outside the output folder; remove the link or choose "
                                   "another out=FOLDER")
    if options.overwrite:
        decision = _BY_ANOTHER if _written_since(out_dir, since) else Decision("overwrite", "--overwrite")
    else:
        reason = _rerun_reason(Path(slide), out_dir, bundle, options)
        if reason is not None:
            decision = Decision("run", reason)
        elif _written_since(out_dir, since):
            decision = _BY_ANOTHER
        else:
            decision = Decision("skip", "its outputs are complete for this slide file, bundle and options")
    if log_rerun and decision.run and (out_dir / REPORT).exists():
        log.info("%s: segmenting it again into %s: %s", slide, out_dir, decision.reason)
    return decision
