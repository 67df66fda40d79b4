"""`slidefuse summary OUT`: rebuilds the cohort table from OUT's run log, as CSV or Parquet; one-line errors for a
folder without a run log and for Parquet without pyarrow."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from slidefuse.cli import cli
from slidefuse.runtime.segment.runlog import RunLog


def _summary(*args: object) -> Result:
    return CliRunner().invoke(cli, ["summary", *[str(a) for a in args]])


def _one_error(result: Result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("slidefuse: error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An OUT whose run log holds one ok slide (with a report.json) and one failed slide."""
    out = tmp_path / "out"
    d = out / "a"
    d.mkdir(parents=True)
    (d / "report.json").write_text(json.dumps({
        "areas": {"background": {"index": 0, "area_mm2": 1.0}, "tumour": {"index": 1, "area_mm2": 0.25}},
        "tissue": {"area_mm2": 0.5}, "tile_counts": {"run": 4, "tissue": 4},
        "backend": {"backend": "ort-cpu", "precision": "fp32"}, "bundle": {"digest": "d" * 64}}))
    log = RunLog(out)
    log.record("/data/a.svs", "ok", out_dir=d, seconds=1.25)
    log.record("-b.svs", "failed", error="-b.svs: unreadable")
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_bytes().decode("utf-8"), newline="")))


def test_summary_rebuilds_the_csv(out: Path, tmp_path: Path) -> None:
    (out / "summary.csv").unlink()
    result = _summary(out)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{out / 'summary.csv'}: 2 slide(s)"
    rows = _rows(out / "summary.csv")
    assert [(r["slide"], r["status"]) for r in rows] == [("/data/a.svs", "ok"), ("'-b.svs", "failed")]
    assert rows[0]["fraction_tumour"] == "0.5" and rows[0]["tiles_run"] == "4" and rows[0]["seconds"] == "1.25"
    other = tmp_path / "elsewhere.csv"
    assert _summary(out, "--out", other).exit_code == 0 and _rows(other) == rows


def test_summary_writes_parquet(out: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    result = _summary(out, "--format", "parquet")
    assert result.exit_code == 0, result.output
    back = pq.read_table(out / "summary.parquet").to_pylist()
    rows = _rows(out / "summary.csv")
    assert [b["slide"] for b in back] == ["/data/a.svs", "-b.svs"]  # no CSV formula prefix in Parquet
    assert back[0]["fraction_tumour"] == float(rows[0]["fraction_tumour"]) and back[0]["tiles_run"] == 4
    assert back[1]["tissue_mm2"] is None and "'" + back[1]["error"] == rows[1]["error"]


def test_summary_of_a_folder_without_a_run_log_is_refused(tmp_path: Path) -> None:
    line = _one_error(_summary(tmp_path), 2)
    assert str(tmp_path) in line and "no run log" in line and "slidefuse segment" in line
    assert not list(tmp_path.iterdir())  # nothing written


def test_parquet_without_pyarrow_names_the_extra(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` fails as on a base install
    line = _one_error(_summary(out, "--format", "parquet"), 1)
    assert "pip install 'slidefuse[parquet]'" in line
    assert not (out / "summary.parquet").exists()  # no CSV written in its place either


def test_a_damaged_run_json_is_rebuilt_from_the_records(out: Path) -> None:
    (out / "run.json").write_text("{ damaged")
    result = _summary(out)
    assert result.exit_code == 0, result.output
    assert [r["status"] for r in _rows(out / "summary.csv")] == ["ok", "failed"]
