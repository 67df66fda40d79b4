"""OUT/run.json (`runtime.segment.runlog`): one line per slide, valid JSON, kept across batches, counted by
status."""

from __future__ import annotations

import json

import pytest

from slidefuse.errors import UsageError
from slidefuse.runtime.segment.runlog import RunLog, read_run_log
from slidefuse.runtime.types import Status


def test_run_log_is_json_with_one_line_per_slide_and_survives_restarts(tmp_path) -> None:
    log = RunLog(tmp_path)
    log.record("/s/a.svs", "ok", out_dir=tmp_path / "a", outputs={"tiff": tmp_path / "a" / "mask.tif"},
               seconds=1.23456)
    log.record("/s/b.svs", "failed", error="b.svs: not a slide", seconds=0.1)
    text = (tmp_path / "run.json").read_text()
    data = json.loads(text)
    assert data["counts"] == {"ok": 1, "failed": 1, "skipped": 0}
    assert [e["slide"] for e in data["slides"]] == ["/s/a.svs", "/s/b.svs"]
    assert data["slides"][0]["seconds"] == 1.235 and data["slides"][1]["error"] == "b.svs: not a slide"
    slide_lines = [ln for ln in text.splitlines() if '"slide":' in ln]
    assert len(slide_lines) == 2 and all(json.loads(ln.rstrip(",")) for ln in slide_lines)
    # A new batch (e.g. after a kill) keeps finished entries and replaces a slide's entry when redone.
    log2 = RunLog(tmp_path)
    log2.record("/s/b.svs", "ok", seconds=2.0)
    log2.record("/s/c.svs", "skipped")
    entries = read_run_log(tmp_path)
    assert [(e["slide"], e["status"]) for e in entries] == [
        ("/s/a.svs", "ok"), ("/s/b.svs", "ok"), ("/s/c.svs", "skipped")
    ]
    assert not list(tmp_path.glob("*.partial"))
    with pytest.raises(UsageError, match="status"):
        log2.record("/s/d.svs", "done")


def test_run_log_starts_afresh_over_an_unreadable_file(tmp_path) -> None:
    (tmp_path / "run.json").write_text('{"slides": [')
    log = RunLog(tmp_path)
    assert log.entries == []
    log.record("/s/a.svs", "ok")
    assert len(read_run_log(tmp_path)) == 1


def test_run_log_takes_the_status_enum_and_stores_plain_strings(tmp_path) -> None:
    log = RunLog(tmp_path)
    entry = log.record("/s/a.svs", Status.SKIPPED)
    assert entry["status"] == "skipped" and type(entry["status"]) is str
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["counts"] == {"ok": 0, "failed": 0, "skipped": 1}
    assert [type(k) for k in log.counts()] == [str, str, str]
