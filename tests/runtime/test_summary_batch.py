"""OUT/summary.csv after real batches: a mixed batch (ok, failed on a corrupt slide, skipped on a second run,
claimed by another process), two concurrent `slidefuse segment` processes on one OUT, and `--ray auto`. Every
row is checked against the slide's report.json and run.json, read here with json and csv only."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from distributed.helpers import make_slides, segment_process, write_list

from runtime.onnx_models import make_bundle
from slidefuse.cli import cli
from slidefuse.runtime.bundle import load_bundle
from slidefuse.runtime.segment import SegmentOptions, segment_many
from slidefuse.runtime.segment.claims import ClaimSet
from slidefuse.runtime.tissue import TissueParams

FAST: dict[str, Any] = {"backend_options": {"threads": 1}, "workers": 1, "tissue": TissueParams(thumb_max_side=512)}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bundle") / "colour"
    make_bundle(folder, tile_size=64, mpp=1.0, overlap=16)
    return folder


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four synthetic slides and a corrupt one (a TIFF header and garbage)."""
    folder = tmp_path_factory.mktemp("slides")
    good = make_slides(folder, 4, size=(768, 512))
    (folder / "corrupt.tif").write_bytes(b"II*\x00 this is not a slide")
    return [*good, folder / "corrupt.tif"]


def _table(out: Path) -> list[dict[str, str]]:
    raw = (out / "summary.csv").read_bytes().decode("utf-8")
    assert raw.endswith("\r\n")
    return list(csv.DictReader(io.StringIO(raw, newline="")))


def _check(out: Path, statuses: dict[str, str]) -> list[dict[str, str]]:
    """summary.csv has exactly one row per slide, with `statuses` (slide name -> status), in run.json's order;
    each row's cells equal what run.json and the slide's report.json say."""
    rows = _table(out)
    run = json.loads((out / "run.json").read_text())["slides"]
    assert [r["slide"] for r in rows] == [e["slide"] for e in run]
    assert {Path(r["slide"]).name: r["status"] for r in rows} == statuses
    assert len(rows) == len(statuses)
    for row, entry in zip(rows, run, strict=True):
        assert row["error"] == (entry["error"] or "")
        assert row["seconds"] == ("" if entry["seconds"] is None else repr(entry["seconds"]))
        if row["status"] == "failed":
            assert row["error"] and all(row[h] == "" for h in ("tissue_mm2", "model_digest", "backend"))
            assert all(v == "" for h, v in row.items() if h.startswith(("area_mm2_", "fraction_")))
            continue
        report = json.loads((Path(entry["out_dir"]) / "report.json").read_text())
        assert float(row["tissue_mm2"]) == report["tissue"]["area_mm2"]
        names = [c["name"] for c in report["model"]["classes"]]
        for i, name in enumerate(names):
            area = report["areas"][name]["area_mm2"]
            assert float(row[f"area_mm2_{name}"]) == area
            expected = "" if i == 0 else repr(area / report["tissue"]["area_mm2"])
            assert row[f"fraction_{name}"] == expected
        assert int(row["tiles_run"]) == report["tile_counts"]["run"]
        assert int(row["tiles_tissue"]) == report["tile_counts"]["tissue"]
        assert row["backend"] == report["backend"]["backend"] and row["precision"] == report["backend"]["precision"]
        assert row["model_digest"] == report["bundle"]["digest"]
        assert int(row["decode_errors"]) == report["slide"]["decode_errors"]["count"]
    return rows


def test_a_mixed_batch_has_one_correct_row_per_slide(tmp_path: Path, bundle: Path, slides: list[Path]) -> None:
    out = tmp_path / "out"
    with ClaimSet("other-run") as other:  # another process holds s2
        assert other.try_claim(out / "s2")
        first = segment_many(slides, load_bundle(bundle), out, SegmentOptions(wait=False, **FAST))
    assert [r.status for r in first] == ["ok", "ok", "claimed", "ok", "failed"]
    _check(out, {"s0.tif": "ok", "s1.tif": "ok", "s3.tif": "ok", "corrupt.tif": "failed"})  # s2: not yet recorded
    segment_many([slides[2]], load_bundle(bundle), out, SegmentOptions(**FAST))  # the other process records it
    _check(out, {"s0.tif": "ok", "s1.tif": "ok", "s2.tif": "ok", "s3.tif": "ok", "corrupt.tif": "failed"})
    again = segment_many(slides, load_bundle(bundle), out, SegmentOptions(**FAST))  # a second run skips the done
    assert [r.status for r in again] == ["skipped"] * 4 + ["failed"]
    _check(out, {"s0.tif": "ok", "s1.tif": "ok", "s2.tif": "ok", "s3.tif": "ok", "corrupt.tif": "failed"})
    (out / "run.json").unlink()  # the run log cleared: the next run's skips are the only record of the slides
    shutil.rmtree(out / ".run")
    segment_many(slides, load_bundle(bundle), out, SegmentOptions(**FAST))
    rows = _check(out, {"s0.tif": "skipped", "s1.tif": "skipped", "s2.tif": "skipped", "s3.tif": "skipped",
                        "corrupt.tif": "failed"})
    assert all(r["tissue_mm2"] for r in rows if r["status"] == "skipped")  # completed from the reports


def test_two_concurrent_processes_leave_one_row_per_slide(tmp_path: Path, bundle: Path, slides: list[Path]) -> None:
    out = tmp_path / "out"
    list_file = write_list(tmp_path / "slides.txt", slides)
    procs = [segment_process(list_file, bundle, out) for _ in range(2)]
    codes = []
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode in (0, 1), err
        codes.append(p.returncode)
    assert 1 in codes  # the process that tried the corrupt slide failed it (the other left it to that one)
    _check(out, {**{s.name: "ok" for s in slides[:4]}, "corrupt.tif": "failed"})
    before = (out / "summary.csv").read_bytes()
    result = CliRunner().invoke(cli, ["summary", str(out)])
    assert result.exit_code == 0 and result.output.strip().endswith(": 5 slide(s)"), result.output
    assert (out / "summary.csv").read_bytes() == before  # the last process's table was already complete


@pytest.mark.slow
def test_a_ray_batch_has_one_row_per_slide(tmp_path: Path, bundle: Path, slides: list[Path]) -> None:
    pytest.importorskip("ray")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["segment", "--workers", "1", *map(str, slides), "--model", str(bundle),
                                      "--out", str(out), "--ray", "auto", "--ray-workers", "2"])
    assert result.exit_code == 1, result.output  # the corrupt slide
    _check(out, {**{s.name: "ok" for s in slides[:4]}, "corrupt.tif": "failed"})
