"""report.json (areas = pixel counts x pixel area, tissue area, model card, versions), the completeness
check used to skip finished slides, --formats, and OUT/run.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slidefuse.errors import UsageError
from slidefuse.runtime.outputs import (
    ALL_FORMATS,
    RunLog,
    outputs_complete,
    parse_formats,
    read_run_log,
    write_outputs,
)

from .test_outputs_common import blobby_mask, make_bundle, make_result, make_slide


@pytest.fixture
def written(tmp_path):
    mask = blobby_mask(240, 320, seed=5)
    result = make_result(mask, tmp_path / "m.raw", mpp=0.8)
    slide = make_slide(1024, 768, 0.25)
    bundle = make_bundle(tmp_path)
    out = tmp_path / "out" / "slide-1"
    paths = write_outputs(result, slide, bundle, out, extra_report={"overlap": 64})
    return mask, result, slide, bundle, out, paths


def test_areas_equal_pixel_counts_times_pixel_area(written) -> None:
    mask, result, slide, bundle, out, paths = written
    report = json.loads(paths["report"].read_text())
    px_mm2 = (0.8 / 1000) ** 2
    for i, name in enumerate(bundle.manifest.class_names):
        n = int((mask == i).sum())
        assert report["areas"][name]["pixels"] == n
        assert report["areas"][name]["area_mm2"] == pytest.approx(n * px_mm2, rel=1e-12)
    assert sum(a["area_mm2"] for a in report["areas"].values()) == pytest.approx(320 * 240 * px_mm2)
    # Tissue: the upper half of the thumbnail is tissue, i.e. half the slide's area.
    assert report["tissue"]["area_mm2"] == pytest.approx(1024 * 768 * 0.25**2 / 1e6 / 2, rel=0.02)


def test_report_content(written) -> None:
    mask, result, slide, bundle, out, paths = written
    report = json.loads(paths["report"].read_text())
    assert report["bundle"]["digest"] == bundle.digest
    assert report["model"]["encoder"] == "tiny-vit" and report["model"]["random_weights"] is True
    assert [c["name"] for c in report["model"]["classes"]] == ["background", "tumour", "stroma"]
    assert report["slide"]["width"] == 1024 and report["slide"]["mpp"] == 0.25
    assert report["tile_counts"] == {"grid": 40, "tissue": 25, "run": 25}
    assert report["timings"]["inference"] == 5.0 and "output_geojson" in report["timings"]
    assert report["throughput"]["tiles_per_s_inference"] == pytest.approx(5.0)
    for k in ("slidefuse", "numpy", "pyvips", "libvips", "onnxruntime"):
        assert k in report["software"]
    assert set(report["formats"]) == ALL_FORMATS
    assert report["outputs"]["geojson"]["grid_mpp_x"] == pytest.approx(0.8)
    assert report["run"] == {"overlap": 64}
    assert set(paths) == ALL_FORMATS | {"tissue"}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["mask.tif", "mask.geojson", "preview.png", "report.json", "tissue.png"]
    )


def test_outputs_complete_detects_what_is_missing(written) -> None:
    mask, result, slide, bundle, out, paths = written
    assert outputs_complete(out, bundle.digest, ALL_FORMATS)
    assert outputs_complete(out, bundle.digest, frozenset({"tiff"}))
    assert not outputs_complete(out, "e" * 64, ALL_FORMATS)  # another bundle
    assert not outputs_complete(out, bundle.digest, frozenset({"tiff"}), mask_mpp=2.0)  # other --mask-mpp
    assert outputs_complete(out, bundle.digest, frozenset({"tiff"}), mask_mpp=0.8)  # = the model's mpp
    (out / "mask.geojson.partial").write_text("{")
    assert not outputs_complete(out, bundle.digest, ALL_FORMATS)  # leftovers of a killed run
    (out / "mask.geojson.partial").unlink()
    with open(paths["tiff"], "r+b") as f:  # a file changed after the report
        f.truncate(100)
    assert not outputs_complete(out, bundle.digest, ALL_FORMATS)
    assert outputs_complete(out, bundle.digest, frozenset({"geojson", "preview"}))
    paths["preview"].unlink()
    assert not outputs_complete(out, bundle.digest, frozenset({"preview"}))
    assert not outputs_complete(out.parent / "nowhere", bundle.digest, ALL_FORMATS)


def test_formats_subset_writes_only_those_and_the_report(tmp_path) -> None:
    result = make_result(blobby_mask(100, 120), tmp_path / "m.raw", mpp=1.0)
    bundle = make_bundle(tmp_path)
    out = tmp_path / "o"
    write_outputs(result, make_slide(240, 200, 0.5), bundle, out, frozenset({"tiff"}))
    assert sorted(p.name for p in out.iterdir()) == ["mask.tif", "report.json", "tissue.png"]
    assert outputs_complete(out, bundle.digest, frozenset({"tiff"}))
    assert not outputs_complete(out, bundle.digest, frozenset({"tiff", "geojson"}))


def test_parse_formats() -> None:
    assert parse_formats("tiff, geojson") == frozenset({"tiff", "geojson"})
    assert parse_formats("all") == ALL_FORMATS | {"zarr"}  # every registered format, opt-in ones too
    with pytest.raises(UsageError, match="png.*choose among geojson, preview, report, tiff"):
        parse_formats("tiff,png")
    with pytest.raises(UsageError):
        parse_formats("")


def test_class_count_mismatch_is_refused(tmp_path) -> None:
    from slidefuse.runtime.outputs import OutputError

    result = make_result(np.zeros((10, 10), np.uint8), tmp_path / "m.raw", mpp=1.0, num_classes=5)
    with pytest.raises(OutputError, match="5 class counts"):
        write_outputs(result, make_slide(10, 10, 1.0), make_bundle(tmp_path), tmp_path / "o")


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
