"""`OUT/run.json`: one entry per slide of a batch (status, error, outputs, seconds).

Format (`slidefuse-run/1`): one JSON object, written so that each slide's entry sits on its own line::

    {"format": "slidefuse-run/1", "updated": "2024-01-01T00:00:00+00:00", "counts": {"ok": 1, ...},
     "slides": [
    {"slide": "/data/a.svs", "status": "ok", "error": null, "out_dir": "OUT/a", "outputs": {...}, ...},
    {"slide": "/data/b.svs", "status": "failed", "error": "...", ...}
    ]}

so it is both valid JSON (`json.load`) and greppable line by line. The file is rewritten atomically
after every slide, so a killed batch keeps the entries of the slides it finished and never leaves a
truncated run.json. Entries are keyed by slide path: recording a slide again (a rerun) replaces its entry
in place; entries of slides from earlier batches in the same OUT folder are kept.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from slidefuse.atomic import write_text_atomic
from slidefuse.errors import UsageError

logger = logging.getLogger(__name__)

RUN_LOG = "run.json"
RUN_FORMAT = "slidefuse-run/1"
STATUSES = ("ok", "failed", "skipped")  # skipped = outputs already complete for the same bundle


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def read_run_log(out_root: Path) -> list[dict[str, Any]]:
    """The slide entries of `out_root/run.json`; [] when absent. Raises ValueError when unreadable."""
    p = Path(out_root) / RUN_LOG
    if not p.exists():
        return []
    d = json.loads(p.read_text(encoding="utf-8"))
    if not isinstance(d, dict) or not isinstance(d.get("slides"), list):
        raise ValueError(f"{p}: not a slidefuse run log (no 'slides' list)")
    return [e for e in d["slides"] if isinstance(e, dict) and "slide" in e]


class RunLog:
    """The batch log of an output folder; `record()` adds or replaces a slide's entry and saves at once."""

    def __init__(self, out_root: Path, *, keep_previous: bool = True) -> None:
        self.out_root = Path(out_root)
        self.path = self.out_root / RUN_LOG
        self.started = _now()
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = {}
        if keep_previous:
            try:
                for e in read_run_log(self.out_root):
                    self._entries[str(e["slide"])] = e
            except (OSError, ValueError) as exc:
                logger.warning("%s is unreadable (%s); starting a new run log", self.path, exc)

    @property
    def entries(self) -> list[dict[str, Any]]:
        """Slide entries in the order they were first recorded."""
        with self._lock:
            return [dict(e) for e in self._entries.values()]

    def counts(self) -> dict[str, int]:
        """Number of entries per status (every status present, 0 when none)."""
        with self._lock:
            out = dict.fromkeys(STATUSES, 0)
            for e in self._entries.values():
                out[e["status"]] = out.get(e["status"], 0) + 1
            return out

    def record(
        self,
        slide: Path | str,
        status: str,
        *,
        error: str | None = None,
        out_dir: Path | None = None,
        outputs: Mapping[str, Path] | None = None,
        seconds: float | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Add or replace the entry of `slide` and rewrite run.json atomically; returns the entry.

        `status` is one of "ok", "failed", "skipped"; `error` a one-line reason for "failed"; `outputs`
        maps each format to its file; `extra` adds JSON-able fields (e.g. tiles, backend).
        """
        if status not in STATUSES:
            raise UsageError(f"run log status {status!r} is unknown; use one of {', '.join(STATUSES)}")
        entry: dict[str, Any] = {
            "slide": str(slide),
            "status": status,
            "error": error,
            "out_dir": str(out_dir) if out_dir is not None else None,
            "outputs": {k: str(v) for k, v in (outputs or {}).items()},
            "seconds": None if seconds is None else round(float(seconds), 3),
            "finished": _now(),
            "batch_started": self.started,
        }
        entry.update(extra)
        with self._lock:
            self._entries[str(slide)] = entry
            self._save_locked()
        return dict(entry)

    def _save_locked(self) -> None:
        counts = dict.fromkeys(STATUSES, 0)
        for e in self._entries.values():
            counts[e["status"]] = counts.get(e["status"], 0) + 1
        head = json.dumps({"format": RUN_FORMAT, "updated": _now(), "counts": counts})
        lines = [json.dumps(e, default=str) for e in self._entries.values()]
        text = head[:-1] + ',\n "slides": [\n' + ",\n".join(lines) + ("\n" if lines else "") + "]}\n"
        self.out_root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, text)
