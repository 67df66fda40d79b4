"""The cohort table (`runtime.segment.summary`) on hand-written run logs and report.json files: columns, class
names as headers, the union of classes over bundles, CSV quoting and formula safety, generic qc/regions columns,
damaged reports, the report cache, the rebuild inside RunLog and Parquet equal to the CSV."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from slidefuse.runtime.segment import summary as summary_mod
from slidefuse.runtime.segment.runlog import RunLog, read_run_log
from slidefuse.runtime.segment.summary import (
    COLUMNS,
    SUMMARY,
    Column,
    column_name,
    csv_text,
    summary_table,
    write_summary_parquet,
)

BASE = ["slide", "status", "error", "tissue_mm2"]
TAIL = ["tiles_run", "tiles_tissue", "seconds", "backend", "precision", "model_digest", "decode_errors", "qc_flags",
        "regions", "region_names"]


def _report(folder: Path, classes: dict[str, float], tissue: float = 2.0, **extra: Any) -> Path:
    """A report.json with the fields the table reads: class areas (mm²) in index order, tissue, tiles, backend."""
    folder.mkdir(parents=True, exist_ok=True)
    report = {
        "format": "slidefuse-report/1",
        "slide": {"decode_errors": {"count": 3, "tiles": []}},
        "bundle": {"digest": "ab" * 32},
        "backend": {"backend": "ort-cpu", "precision": "fp32"},
        "areas": {name: {"index": i, "pixels": 1, "area_mm2": a, "fraction": 0.5}
                  for i, (name, a) in enumerate(classes.items())},
        "tissue": {"area_mm2": tissue},
        "tile_counts": {"grid": 10, "tissue": 6, "run": 5},
        **extra,
    }
    (folder / "report.json").write_text(json.dumps(report))
    return folder


def _entry(slide: str, status: str, out_dir: Path | None = None, **kw: Any) -> dict[str, Any]:
    return {"slide": slide, "status": status, "error": kw.pop("error", None),
            "out_dir": str(out_dir) if out_dir else None, "outputs": {}, "seconds": 1.5, **kw}


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_class_names_become_column_names() -> None:
    assert column_name("Tumour (invasive)") == "tumour_invasive"
    assert column_name("Nécrose") == "necrose"
    assert column_name("CD8+ T-cells") == "cd8_t_cells"
    assert column_name("---", 3) == "class3"
    assert column_name("__a__b") == "a_b"


def test_columns_are_in_their_documented_order(tmp_path: Path) -> None:
    d = _report(tmp_path / "a", {"background": 1.0, "Tumour": 0.5})
    table = summary_table([_entry("a.svs", "ok", d)])
    assert list(table.header) == [*BASE, "area_mm2_background", "area_mm2_tumour", "fraction_background",
                                  "fraction_tumour", *TAIL]
    names = [c.name if isinstance(c, Column) else c.prefix for c in COLUMNS]
    assert len(names) == len(set(names))
    docs = (Path(__file__).resolve().parents[2] / "docs" / "formats.md").read_text()
    for name in names:  # every column is documented
        assert f"`{name}" in docs, name


def test_rows_read_the_report_and_the_run_log(tmp_path: Path) -> None:
    d = _report(tmp_path / "a", {"background": 1.0, "tumour": 0.5, "stroma": 0.25}, tissue=2.0)
    (row,) = _rows(csv_text(summary_table([_entry("a.svs", "ok", d, tiles={"run": 7, "tissue": 6},
                                                  decode_errors=0)])))
    assert row["slide"] == "a.svs" and row["status"] == "ok" and row["error"] == ""
    assert float(row["tissue_mm2"]) == 2.0 and float(row["area_mm2_tumour"]) == 0.5
    assert float(row["fraction_tumour"]) == 0.25 and float(row["fraction_stroma"]) == 0.125
    assert row["fraction_background"] == ""  # class 0 holds the slide outside tissue too
    assert row["tiles_run"] == "7"  # the run log's value wins over the report's (5)
    assert row["tiles_tissue"] == "6" and row["seconds"] == "1.5"
    assert (row["backend"], row["precision"], row["model_digest"]) == ("ort-cpu", "fp32", "ab" * 32)
    assert row["decode_errors"] == "0"  # the run log's count wins over the report's (3)
    assert row["qc_flags"] == row["regions"] == row["region_names"] == ""  # absent sections: empty cells


def test_a_skipped_slide_takes_tiles_and_decode_errors_from_its_report(tmp_path: Path) -> None:
    d = _report(tmp_path / "a", {"background": 1.0})
    (row,) = _rows(csv_text(summary_table([_entry("a.svs", "skipped", d, tiles=None, decode_errors=None)])))
    assert (row["status"], row["tiles_run"], row["tiles_tissue"], row["decode_errors"]) == ("skipped", "5", "6", "3")


def test_a_failed_slide_ignores_an_old_report(tmp_path: Path) -> None:
    d = _report(tmp_path / "a", {"background": 1.0, "tumour": 0.5})
    (row,) = _rows(csv_text(summary_table([_entry("a.svs", "failed", d, error="a.svs: unreadable")])))
    assert row["error"] == "a.svs: unreadable" and row["tissue_mm2"] == "" and row["model_digest"] == ""
    assert "area_mm2_tumour" not in row  # no class columns come from a failed slide's leftovers


def test_bundles_with_different_classes_give_the_union_of_columns(tmp_path: Path) -> None:
    a = _report(tmp_path / "a", {"background": 1.0, "Tumour": 0.5})
    b = _report(tmp_path / "b", {"background": 1.0, "stroma": 0.2, "tumour": 0.3, "TUMOUR!": 0.1})
    table = summary_table([_entry("a.svs", "ok", a), _entry("b.svs", "ok", b)])
    classes = [h.removeprefix("area_mm2_") for h in table.header if h.startswith("area_mm2_")]
    assert classes == ["background", "tumour", "stroma", "tumour_3"]  # a name that collides gets _<index>
    ra, rb = _rows(csv_text(table))
    assert ra["area_mm2_stroma"] == "" and ra["area_mm2_tumour_3"] == "" and float(ra["area_mm2_tumour"]) == 0.5
    assert float(rb["area_mm2_tumour"]) == 0.3 and float(rb["area_mm2_tumour_3"]) == 0.1


def test_text_cells_are_quoted_and_formula_safe(tmp_path: Path) -> None:
    nasty = ["=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", "\tx", "a,b \"c\"\nd"]
    entries = [_entry(f"s{i}.svs", "failed", error=t) for i, t in enumerate(nasty)]
    entries.append(_entry("=cmd|' /C calc'!A0.svs", "failed", error=None))
    text = csv_text(summary_table(entries))
    assert text.endswith("\r\n") and text.count("\r\n") == len(entries) + 1  # the line break inside stays quoted
    rows = _rows(text)
    assert [r["error"] for r in rows[:-1]] == ["'" + t for t in nasty[:5]] + [nasty[5]]
    assert rows[-1]["slide"] == "'=cmd|' /C calc'!A0.svs"
    assert '"a,b ""c""\nd"' in text  # RFC 4180: quotes doubled inside a quoted cell


def test_qc_flags_and_regions_are_read_from_their_sections(tmp_path: Path) -> None:
    a = _report(tmp_path / "a", {"background": 1.0}, qc={"flags": ["pen", {"name": "blur"}]},
                regions={"file": "r.geojson", "regions": [{"name": "tumour", "areas": {}}, {"id": 7}]})
    b = _report(tmp_path / "b", {"background": 1.0}, qc={"flags": []},
                regions={"kind": "mask", "regions": [{"name": "r1"}, {"name": "r2"}, {"name": "r3"}]})
    ra, rb = _rows(csv_text(summary_table([_entry("a.svs", "ok", a), _entry("b.svs", "ok", b)])))
    assert (ra["qc_flags"], ra["regions"], ra["region_names"]) == ("pen;blur", "2", "tumour;7")
    assert (rb["qc_flags"], rb["regions"], rb["region_names"]) == ("", "3", "r1;r2;r3")


def test_damaged_reports_leave_their_cells_empty(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "report.json").write_text("{ not json")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "report.json").write_text(json.dumps({"areas": [1, 2], "tissue": "big", "tile_counts": {"run": "5"},
                                                 "backend": None, "qc": {"flags": "pen"}, "regions": 3}))
    rows = _rows(csv_text(summary_table([_entry("bad.svs", "ok", tmp_path / "bad"), _entry("odd.svs", "ok", odd),
                                         _entry("gone.svs", "ok", tmp_path / "gone")])))
    assert [r["status"] for r in rows] == ["ok"] * 3
    for r in rows:
        assert all(r[h] == "" for h in ("tissue_mm2", "tiles_run", "backend", "qc_flags", "regions")), r


def test_each_report_is_parsed_once_per_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = _report(tmp_path / "a", {"background": 1.0, "tumour": 0.5})
    reads: list[Path] = []
    real = summary_mod.read_report

    def counting(p: Path) -> dict[str, Any] | None:
        reads.append(p)
        return real(p)

    monkeypatch.setattr(summary_mod, "read_report", counting)
    entries = [_entry("a.svs", "ok", d)]
    first = csv_text(summary_table(entries))
    assert csv_text(summary_table(entries)) == first and len(reads) == 1
    _report(d, {"background": 1.0, "tumour": 0.75})  # rewritten: a new size, mtime or inode
    (row,) = _rows(csv_text(summary_table(entries)))
    assert len(reads) == 2 and float(row["area_mm2_tumour"]) == 0.75


def test_runlog_rebuilds_the_table_with_run_json(tmp_path: Path) -> None:
    d = _report(tmp_path / "out" / "a", {"background": 1.0, "tumour": 0.5})
    log = RunLog(tmp_path / "out")
    log.record("/data/a.svs", "ok", out_dir=d, outputs={"report": d / "report.json"}, seconds=2.0)
    log.record("/data/b.svs", "failed", error="/data/b.svs: broken")
    rows = _rows((tmp_path / "out" / SUMMARY).read_bytes().decode("utf-8"))
    assert [(r["slide"], r["status"]) for r in rows] == [("/data/a.svs", "ok"), ("/data/b.svs", "failed")]
    assert [r["slide"] for r in rows] == [e["slide"] for e in read_run_log(tmp_path / "out")]
    assert float(rows[0]["area_mm2_tumour"]) == 0.5 and rows[1]["error"] == "/data/b.svs: broken"


def test_a_table_that_cannot_be_written_leaves_run_json_written(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    (out / SUMMARY).mkdir(parents=True)  # a folder where the table goes: the rename fails
    with caplog.at_level(logging.WARNING):
        RunLog(out).record("/data/a.svs", "failed", error="x")
    assert [e["slide"] for e in read_run_log(out)] == ["/data/a.svs"]
    assert json.loads((out / "run.json").read_text())["counts"]["failed"] == 1
    assert any(SUMMARY in r.getMessage() and "slidefuse summary" in r.getMessage() for r in caplog.records)


def test_parquet_read_back_equals_the_csv(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    a = _report(tmp_path / "a", {"background": 1.0, "tumour": 0.1 + 0.2})
    b = _report(tmp_path / "b", {"background": 1.0, "stroma": 1e-9}, qc={"flags": ["pen"]})
    table = summary_table([_entry("a.svs", "ok", a), _entry("=b.svs", "ok", b),
                           _entry("c.svs", "failed", error="c.svs: broken, \"badly\"")])
    write_summary_parquet(table, tmp_path / "t.parquet")
    back = pq.read_table(tmp_path / "t.parquet")
    assert back.column_names == list(table.header)
    assert str(back.schema.field("tiles_run").type) == "int64" and str(back.schema.field("tissue_mm2").type) == "double"
    rows = _rows(csv_text(table))
    for row, got in zip(rows, back.to_pylist(), strict=True):
        for name, cell in row.items():
            v = got[name]
            if v is None:
                assert cell == "", name
            elif isinstance(v, str):
                assert cell in (v, "'" + v), name  # the CSV's formula prefix only
            else:
                assert type(v)(cell) == v, name
    assert back.to_pylist()[1]["slide"] == "=b.svs" and rows[1]["slide"] == "'=b.svs"


@pytest.mark.parametrize("name", ["summary.csv", "SUMMARY.CSV", "summary.parquet"])
def test_the_table_names_are_not_slide_folder_names(name: str) -> None:
    from slidefuse.runtime.segment.inputs import out_name_problem

    problem = out_name_problem(name)
    assert problem is not None and "summary.csv" in problem
