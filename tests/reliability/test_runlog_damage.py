"""A damaged run log never stops a batch: bad lines in `OUT/.run/*.jsonl` (binary, garbage, wrong JSON types, missing
fields, an unknown status) and bad entries in run.json are skipped with one warning per file naming its line
numbers; the run completes, later runs are not blocked, and run.json is written from the good records."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from slidefuse.runtime.segment.runlog import RECORDS_DIR, read_records, read_run_log

from .conftest import segment, write_slide

GOOD = {"slide": "/data/earlier.svs", "status": "ok", "t": 1.0, "error": None}
BAD_LINES = [
    b"\xff\xfe\x00\x81 binary \x00\x00",  # not UTF-8
    b"garbage, not JSON at all",
    b"[1, 2, 3]",  # JSON, not an object
    json.dumps({"slide": 5, "status": "ok", "t": 2.0}).encode(),  # wrong type
    json.dumps({"slide": "/data/x.svs", "status": "ok", "t": "yesterday"}).encode(),
    json.dumps({"slide": "/data/x.svs", "status": "ok", "t": 10**400}).encode(),
    json.dumps({"status": "ok", "t": 3.0}).encode(),  # missing the slide
    json.dumps({"slide": "/data/y.svs", "t": 3.0}).encode(),  # missing the status
    json.dumps({"slide": "/data/y.svs", "status": "exploded", "t": 3.0}).encode(),  # unknown status
    json.dumps({"slide": "/data/y.svs", "status": ["ok"], "t": 3.0}).encode(),
    json.dumps({"slide": "/data/y.svs", "slide_key": {"a": 1}, "status": "ok", "t": 3.0}).encode(),
    b"[" * 100_000,  # too deep for the JSON parser
]


def _damaged_log(out: Path) -> tuple[Path, Path]:
    """Two damaged record files: one with every kind of bad line around a good record, one with a single bad line
    and an unfinished last line (a process killed mid-write: skipped without a warning)."""
    folder = out / RECORDS_DIR
    folder.mkdir(parents=True)
    one = folder / "damaged.jsonl"
    one.write_bytes(b"\n".join([BAD_LINES[0], json.dumps(GOOD).encode(), *BAD_LINES[1:]]) + b"\n\n")
    two = folder / "other.jsonl"
    two.write_bytes(b"\x00\x01\x02\n" + b'{"slide": "/data/z.svs", "sta')
    return one, two


def _warnings_about(stderr: str, path: Path) -> list[str]:
    return [ln for ln in stderr.splitlines() if "WARNING" in ln and str(path) in ln]


def test_the_batch_completes_over_a_damaged_run_log(tmp_path: Path, bundle_dir: Path) -> None:
    slide = write_slide(tmp_path / "slide.tif")
    out = tmp_path / "out"
    one, two = _damaged_log(out)
    result = segment(slide, "--model", bundle_dir, "--out", out)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    [warning] = _warnings_about(result.stderr, one)  # one warning per file
    assert f"{len(BAD_LINES)} damaged line(s)" in warning and "line 1: not UTF-8 text" in warning
    assert "line 3: not JSON" in warning and "and 7 more" in warning
    [warning] = _warnings_about(result.stderr, two)
    assert "1 damaged line(s)" in warning and "line 1: not JSON" in warning  # control bytes are UTF-8
    run = json.loads((out / "run.json").read_text())
    assert [(e["slide"], e["status"]) for e in run["slides"]] == [(GOOD["slide"], "ok"), (str(slide), "ok")]
    assert run["counts"] == {"ok": 2, "failed": 0, "skipped": 0}
    again = segment(slide, "--model", bundle_dir, "--out", out)  # later runs are not blocked
    assert again.exit_code == 0 and "1 skipped" in again.stderr, again.output


def test_damaged_entries_of_run_json_are_skipped(tmp_path: Path, bundle_dir: Path) -> None:
    slide = write_slide(tmp_path / "slide.tif")
    out = tmp_path / "out"
    out.mkdir()
    view = {"format": "slidefuse-run/1", "slides": [GOOD, {"slide": 7, "status": "ok"}, "text"]}
    (out / "run.json").write_text(json.dumps(view))
    result = segment(slide, "--model", bundle_dir, "--out", out)
    assert result.exit_code == 0, result.output
    [warning] = _warnings_about(result.stderr, out / "run.json")
    assert "2 damaged entry(s)" in warning and "entry 2: no slide path" in warning
    assert [e["slide"] for e in read_run_log(out)] == [GOOD["slide"], str(slide)]


def test_a_run_json_that_is_not_text_is_rebuilt(tmp_path: Path, bundle_dir: Path) -> None:
    slide = write_slide(tmp_path / "slide.tif")
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xff")
    result = segment(slide, "--model", bundle_dir, "--out", out)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert [e["slide"] for e in json.loads((out / "run.json").read_text())["slides"]] == [str(slide)]


def test_one_warning_per_file_however_often_it_is_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    one, two = _damaged_log(tmp_path)
    with caplog.at_level(logging.WARNING, logger="slidefuse"):
        for _ in range(3):
            assert [e["slide"] for e in read_records(tmp_path)] == [GOOD["slide"]]
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [str(one), str(two)]
    with open(one, "ab") as f:  # new damage is reported once more
        f.write(b"more garbage\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="slidefuse"):
        read_records(tmp_path)
        read_records(tmp_path)
    assert len(caplog.records) == 1 and f"line {len(BAD_LINES) + 3}: not JSON" in caplog.records[0].getMessage()
