"""report.json (areas = pixel counts x pixel area, tissue area, model card, versions), the completeness
check used to skip finished slides (`outputs_current`) and --formats."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slidefuse.errors import UsageError
from slidefuse.runtime.outputs import ALL_FORMATS, OutputOptions, parse_formats, write_outputs

from .test_outputs_common import blobby_mask, current, make_bundle, make_result, make_slide


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


def test_outputs_current_detects_what_is_missing(written) -> None:
    mask, result, slide, bundle, out, paths = written
    assert current(out, ALL_FORMATS)
    assert current(out, frozenset({"tiff"}))
    assert not current(out, frozenset({"tiff"}), mask_mpp=2.0)  # other --mask-mpp
    assert current(out, frozenset({"tiff"}), mask_mpp=0.8)  # = the model's mpp
    (out / "mask.geojson.partial").write_text("{")
    assert not current(out, ALL_FORMATS)  # leftovers of a killed run
    (out / "mask.geojson.partial").unlink()
    (out / "mask.raw.tmp").write_bytes(b"\0")
    assert not current(out, ALL_FORMATS)  # the raw mask of an interrupted slide
    (out / "mask.raw.tmp").unlink()
    with open(paths["tiff"], "r+b") as f:  # a file changed after the report
        f.truncate(100)
    assert not current(out, ALL_FORMATS)
    assert not current(out, frozenset({"geojson", "preview"}))  # every file the report lists must be as recorded
    write_outputs(result, slide, bundle, out)
    paths["preview"].unlink()
    assert not current(out, frozenset({"preview"}))
    assert not current(out.parent / "nowhere", ALL_FORMATS)


def test_formats_subset_writes_only_those_and_the_report(tmp_path) -> None:
    result = make_result(blobby_mask(100, 120), tmp_path / "m.raw", mpp=1.0)
    bundle = make_bundle(tmp_path)
    out = tmp_path / "o"
    write_outputs(result, make_slide(240, 200, 0.5), bundle, out, OutputOptions(formats=frozenset({"tiff"})))
    assert sorted(p.name for p in out.iterdir()) == ["mask.tif", "report.json", "tissue.png"]
    assert current(out, frozenset({"tiff"}))
    assert not current(out, frozenset({"tiff", "geojson"}))


def test_parse_formats() -> None:
    assert parse_formats("tiff, geojson") == frozenset({"tiff", "geojson"})
    # every registered format, opt-in ones too
    assert parse_formats("all") == ALL_FORMATS | {"zarr", "probs", "probs-zarr", "palette"}
    with pytest.raises(UsageError,
                       match="png.*choose among geojson, palette, preview, probs, probs-zarr, report, tiff"):
        parse_formats("tiff,png")
    with pytest.raises(UsageError):
        parse_formats("")


def test_class_count_mismatch_is_refused(tmp_path) -> None:
    from slidefuse.runtime.outputs import OutputError

    result = make_result(np.zeros((10, 10), np.uint8), tmp_path / "m.raw", mpp=1.0, num_classes=5)
    with pytest.raises(OutputError, match="5 class counts"):
        write_outputs(result, make_slide(10, 10, 1.0), make_bundle(tmp_path), tmp_path / "o")
