"""`OUT/run.json`: one entry per slide of a batch (status, error, outputs, seconds), safe for any number of
processes (on one host or many sharing the folder) recording into the same OUT at once.

Each process appends its records to its own JSON-lines file, `OUT/.run/<run id>.jsonl` (one line per slide
it finished, flushed and fsynced; a process killed mid-line leaves a last line that is skipped). run.json is
the merged view: after every record the process rebuilds it from run.json and every `.run/*.jsonl` file,
under a short cross-process mutex (`run.json.lock`), and writes it atomically, then the cohort table
`summary.csv` from the same entries (`runtime.segment.summary`). `read_run_log` merges the same
way, so it is exact even while other processes are still writing. Entries are keyed by slide path: the latest
record of a slide (by its time `t`) wins, in the position where the slide was first recorded, except that a
"skipped" record keeps the "ok" entry of the run that made the outputs, and a "claim_lost" record (a process
that started the slide and was taken over) never replaces another entry and is replaced by any; entries of
earlier batches in the same OUT are kept. A damaged line or entry (binary, garbage, wrong types, a missing
field, an unknown status) is skipped with one warning per file naming its line numbers: no damage stops a run or
hides the good records.

Format (`slidefuse-run/1`): one JSON object, written so that each slide's entry sits on its own line::

    {"format": "slidefuse-run/1", "updated": "2024-01-01T00:00:00+00:00", "counts": {"ok": 1, ...},
     "slides": [
    {"slide": "/data/a.svs", "status": "ok", "error": null, "out_dir": "OUT/a", "outputs": {...}, ...},
    {"slide": "/data/b.svs", "status": "failed", "error": "...", ...}
    ]}

so it is both valid JSON (`json.load`) and greppable line by line; it is never truncated.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from slidefuse.atomic import write_text_atomic
from slidefuse.errors import UsageError
from slidefuse.runtime.segment.claims import exclusive_file
from slidefuse.runtime.segment.skip import resolved
from slidefuse.runtime.segment.summary import rebuild_after_save
from slidefuse.runtime.types import RUN_LOG, Status

logger = logging.getLogger(__name__)

__all__ = ["RECORDED", "RECORDS_DIR", "RUN_FORMAT", "RUN_LOG", "STATUSES", "RunLog", "read_records", "read_run_log"]

RUN_FORMAT = "slidefuse-run/1"
RECORDS_DIR = ".run"  # OUT/.run/<run id>.jsonl: each process's own append-only records
STATUSES = (Status.OK, Status.FAILED, Status.SKIPPED)  # recorded here; "claimed" slides are their holder's to record
RECORDED = (*STATUSES, Status.CLAIM_LOST)  # what `record` takes: a lost claim too, which never hides another entry
_STATUS_VALUES = tuple(s.value for s in RECORDED)  # the statuses a record read back may carry
_LISTED = 5  # damaged lines named in one warning (the rest are counted)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _finite_number(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer too large for a float
        return False


def _problem(e: Any) -> str | None:
    """Why a parsed record or run.json entry cannot be used; None when it can. What the merge reads must be of
    the right type: `slide` (a path), `status` (ok, failed, skipped), `slide_key` (a path or null) and `t` (a
    number, or absent/null: oldest)."""
    if not isinstance(e, dict):
        return "not a JSON object"
    if not isinstance(e.get("slide"), str) or not e["slide"]:
        return "no slide path"
    if not isinstance(e.get("status"), str) or e["status"] not in _STATUS_VALUES:
        return f"status {str(e.get('status'))[:40]!r} is not one of {', '.join(_STATUS_VALUES)}"
    if e.get("slide_key") is not None and not isinstance(e["slide_key"], str):
        return "slide_key is not a path"
    if e.get("t") is not None and not _finite_number(e["t"]):
        return "time t is not a number"
    return None


def _parse_line(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) for a usable line; (None, why) for a damaged one; (None, None) for a blank one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    if not text.strip():
        return None, None
    try:
        e = json.loads(text)
    except (ValueError, RecursionError):
        return None, "not JSON"
    problem = _problem(e)
    return (None, problem) if problem is not None else (e, None)


_warned: dict[str, set[int]] = {}  # file -> the damaged lines (entries) already reported by this process
_warned_lock = threading.Lock()


def _report_damage(path: Path, bad: list[tuple[int, str]], unit: str = "line") -> None:
    """One warning per file, naming it and each damaged line (or run.json entry) not reported before."""
    with _warned_lock:
        seen = _warned.setdefault(str(path), set())
        new = [(n, why) for n, why in bad if n not in seen]
        seen.update(n for n, _ in new)
    if not new:
        return
    listed = "; ".join(f"{unit} {n}: {why}" for n, why in new[:_LISTED])
    more = f"; and {len(new) - _LISTED} more" if len(new) > _LISTED else ""
    logger.warning("%s: %d damaged %s(s) skipped (%s%s); the other records are used", path, len(new), unit, listed,
                   more)


def _read_view(path: Path) -> list[dict[str, Any]]:
    """The slide entries of a run.json file; [] when absent. Raises ValueError when unreadable (not UTF-8, not
    JSON, no "slides" list); a damaged entry is skipped with a warning."""
    if not path.exists():
        return []
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be a slidefuse run log") from None
    if not isinstance(d, dict) or not isinstance(d.get("slides"), list):
        raise ValueError(f"{path}: not a slidefuse run log (no 'slides' list)")
    problems = [_problem(e) for e in d["slides"]]
    _report_damage(path, [(n, why) for n, why in enumerate(problems, 1) if why is not None], unit="entry")
    return [e for e, why in zip(d["slides"], problems, strict=True) if why is None]


def _read_record_file(f: Path) -> list[dict[str, Any]]:
    """The usable records of one process's `.jsonl` file. A damaged line (not UTF-8, not JSON, fields of the wrong
    type, an unknown status) is skipped with one warning per file; an unfinished last line (being written, or
    cut by a kill) is skipped silently."""
    try:
        data = f.read_bytes()
    except OSError as exc:
        logger.warning("%s is unreadable (%s); its records are left out", f, exc)
        return []
    *lines, last = data.split(b"\n")
    out, bad = [], []
    for n, raw in enumerate(lines, 1):
        e, why = _parse_line(raw)
        if e is not None:
            out.append(e)
        elif why is not None:
            bad.append((n, why))
    e, _ = _parse_line(last)
    if e is not None:
        out.append(e)
    _report_damage(f, bad)
    return out


def read_records(out_root: Path) -> list[dict[str, Any]]:
    """Every usable record of every process in `out_root/.run/*.jsonl`, oldest first (by `t`). Damaged lines are
    skipped (see `_read_record_file`), so a damaged file never stops a run nor hides the other records."""
    folder = Path(out_root) / RECORDS_DIR
    out: list[dict[str, Any]] = []
    for f in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        out.extend(_read_record_file(f))
    return sorted(out, key=lambda e: float(e.get("t") or 0.0))


def _merge(view: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Latest entry per slide (by `t`; entries without one count as oldest), in first-recorded order. A
    "skipped" record (outputs found complete) does not hide the "ok" entry of the run that made them: with
    several processes, one that started later skips what another has just done."""
    merged: dict[str, dict[str, Any]] = {}
    for e in [*view, *records]:
        key = str(e.get("slide_key") or e["slide"])  # the resolved path: relative and absolute forms are one
        old = merged.get(key)
        if old is not None and e["status"] == "skipped" and old["status"] == "ok":
            continue
        if old is not None and e["status"] == Status.CLAIM_LOST:
            continue  # the process that took the claim over records the slide (whenever its record lands)
        if old is None or old["status"] == Status.CLAIM_LOST or float(e.get("t") or 0.0) >= float(old.get("t") or 0.0):
            merged[key] = e
    return list(merged.values())


def read_run_log(out_root: Path) -> list[dict[str, Any]]:
    """The slide entries of `out_root`'s run log: run.json merged with every process's records (see the
    module docstring); [] when there is none. Raises ValueError when run.json is unreadable."""
    return _merge(_read_view(Path(out_root) / RUN_LOG), read_records(out_root))


def _counts(entries: list[dict[str, Any]]) -> dict[str, int]:
    out = dict.fromkeys((s.value for s in STATUSES), 0)
    for e in entries:
        out[e["status"]] = out.get(e["status"], 0) + 1
    return out


class RunLog:
    """One process's writer of an output folder's run log; `record()` appends a slide's entry to this
    process's records and rewrites the merged run.json at once.

    keep_previous: False leaves the entries recorded before this log was made out of `entries`, `counts`
    and run.json (they stay in `.run/`).
    """

    def __init__(self, out_root: Path, *, keep_previous: bool = True, run_id: str | None = None) -> None:
        self.out_root = Path(out_root)
        self.path = self.out_root / RUN_LOG
        self.started = _now()
        self._t0 = time.time()
        self.keep_previous = keep_previous
        self.run_id = run_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.records_path = self.out_root / RECORDS_DIR / f"{self.run_id}.jsonl"
        self._lock = threading.Lock()

    def _view(self) -> list[dict[str, Any]]:
        try:
            entries = read_run_log(self.out_root)
        except (OSError, ValueError) as exc:
            logger.warning("%s is unreadable (%s); rebuilding it from the records in %s", self.path, exc,
                           self.out_root / RECORDS_DIR)
            entries = _merge([], read_records(self.out_root))
        if not self.keep_previous:
            entries = [e for e in entries if float(e.get("t") or 0.0) >= self._t0]
        return entries

    @property
    def entries(self) -> list[dict[str, Any]]:
        """Slide entries (every process's) in the order they were first recorded."""
        return [dict(e) for e in self._view()]

    def counts(self) -> dict[str, int]:
        """Number of entries per status (every status present, 0 when none)."""
        return _counts(self._view())

    def record(
        self,
        slide: Path | str,
        status: Status | str,
        *,
        error: str | None = None,
        out_dir: Path | None = None,
        outputs: Mapping[str, Path] | None = None,
        seconds: float | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Add or replace the entry of `slide` and rewrite run.json atomically; returns the entry.

        `status` is one of `RECORDED` (ok, failed, skipped, claim_lost); `error` a one-line reason for "failed"
        and "claim_lost"; `outputs` maps each format to its file; `extra` adds JSON-able fields (e.g. tiles,
        backend, holder).
        """
        if status not in RECORDED:
            raise UsageError(f"run log status {status!r} is unknown; use one of {', '.join(RECORDED)}")
        entry: dict[str, Any] = {
            "slide": str(slide),
            "slide_key": str(resolved(slide)),
            "status": Status(status).value,
            "error": error,
            "out_dir": str(out_dir) if out_dir is not None else None,
            "outputs": {k: str(v) for k, v in (outputs or {}).items()},
            "seconds": None if seconds is None else round(float(seconds), 3),
            "finished": _now(),
            "batch_started": self.started,
            "run_id": self.run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        entry.update(extra)
        entry["t"] = time.time()  # orders records of many processes (latest wins)
        with self._lock:
            try:
                self._append(entry)
                self._save()
            except OSError as exc:  # the run log is a record, not the outputs: the batch goes on without it
                logger.warning("run log not written (%s: %s); the slide's outputs and report.json are "
                               "unaffected", exc.filename or self.path, exc.strerror or exc)
        return dict(entry)

    def _append(self, entry: dict[str, Any]) -> None:
        self.records_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.records_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _save(self) -> None:
        """Rebuild run.json, and the cohort table summary.csv from the same entries, from every process's records,
        under the folder's run-log mutex."""
        try:
            with exclusive_file(self.out_root / (RUN_LOG + ".lock")):
                entries = self._view()
                head = json.dumps({"format": RUN_FORMAT, "updated": _now(), "counts": _counts(entries)})
                lines = [json.dumps(e, default=str) for e in entries]
                text = head[:-1] + ',\n "slides": [\n' + ",\n".join(lines) + ("\n" if lines else "") + "]}\n"
                write_text_atomic(self.path, text)
                rebuild_after_save(self.out_root, entries)
        except TimeoutError as exc:  # the record is safe in .run/; the next save (any process's) includes it
            logger.warning("run.json not rewritten this time: %s", exc)
