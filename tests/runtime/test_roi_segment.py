"""Regions of interest through the real command line and API on the real CMU slide (the colour-classifier model):
two QuPath-style annotations (one partly off the tissue and partly off the slide) restrict the run, the mask is 0
outside them (checked with tifffile and shapely), the areas per region sum to the whole slide's areas inside them,
mask.geojson stays inside them, a changed regions file reruns the slide; refusals of --roi, a list's roi column,
mask images, the API's roi= argument and --all-tiles."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pyvips
import shapely
import tifffile
from click.testing import CliRunner

from slidefuse.cli import cli
from slidefuse.errors import UsageError

FORMATS = "tiff,geojson,report"

# Level-0 px of CMU-1-Small-Region (2220 x 2967): A lies on tissue; B runs from the glass left of the tissue, and
# off the slide's left edge, onto the tissue, with a hole.
REGION_A = [[[900.3, 1600.2], [1400.6, 1600.2], [1400.6, 2300.7], [900.3, 2300.7], [900.3, 1600.2]]]
REGION_B = [[[-300.4, 2350.3], [1000.2, 2350.3], [1000.2, 2850.9], [-300.4, 2850.9], [-300.4, 2350.3]],
            [[500.1, 2500.6], [700.8, 2500.6], [700.8, 2700.2], [500.1, 2700.2], [500.1, 2500.6]]]


def _features() -> list[dict[str, Any]]:
    return [{"type": "Feature", "id": "3f1c", "geometry": {"type": "Polygon", "coordinates": REGION_A},
             "properties": {"objectType": "annotation", "name": "tumour block"}},
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": REGION_B},
             "properties": {"objectType": "annotation", "classification": {"name": "Margin"}}}]


def _segment(slide: Path, bundle: Path, out: Path, *extra: str) -> Any:
    result = CliRunner().invoke(cli, ["segment", str(slide), "--model", str(bundle), "--out", str(out), "--backend",
                                      "ort-cpu", "--workers", "1", "--formats", FORMATS, "-q", *extra])
    return result


def _report(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "report.json").read_text())  # type: ignore[no-any-return]


def _model_inside(geoms: list[Any], report: dict[str, Any]) -> np.ndarray:
    """bool [h, w] per geometry (level-0 px): model pixel centres inside it, by shapely (not slidefuse)."""
    w, h = report["mask"]["width"], report["mask"]["height"]
    sx, sy = report["mask"]["l0_per_px_x"], report["mask"]["l0_per_px_y"]
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    return np.stack([shapely.contains_xy(g, xx * sx, yy * sy) for g in geoms])


@pytest.fixture(scope="module")
def cmu_runs(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from benchmarks.slides import find_slide, missing_slide_reason

    slide = find_slide("CMU-1-Small-Region.svs")
    if not slide.is_file():
        pytest.skip(missing_slide_reason("CMU-1-Small-Region.svs"))
    tmp = tmp_path_factory.mktemp("roi")
    roi = tmp / "annotations.geojson"
    roi.write_text(json.dumps({"type": "FeatureCollection", "features": _features()}))
    for name, extra in (("full", ()), ("roi", ("--roi", str(roi)))):
        result = _segment(slide, bundle_dir, tmp / name, *extra)
        assert result.exit_code == 0, result.output
    return {"slide": slide, "roi": roi, "full": tmp / "full" / slide.stem, "regions": tmp / "roi" / slide.stem,
            "out": tmp / "roi", "bundle": bundle_dir}


def _mask(folder: Path) -> np.ndarray:
    return np.asarray(tifffile.imread(folder / "mask.tif", key=0))


def test_only_tiles_touching_a_region_run(cmu_runs: dict[str, Any]) -> None:
    full, roi = _report(cmu_runs["full"])["tile_counts"], _report(cmu_runs["regions"])["tile_counts"]
    assert roi["grid"] == full["grid"] and roi["tissue"] == full["tissue"] == full["run"]
    assert 0 < roi["run"] == roi["roi"] < full["run"] / 2
    assert "roi" not in full


def test_the_cohort_table_counts_and_names_the_regions(cmu_runs: dict[str, Any]) -> None:
    import csv

    names = [r.get("name") or r.get("id") for r in _report(cmu_runs["regions"])["regions"]["regions"]]
    (row,) = list(csv.DictReader((cmu_runs["out"] / "summary.csv").open(newline="", encoding="utf-8")))
    assert row["regions"] == str(len(names)) == "2" and row["region_names"] == ";".join(names)


def test_the_mask_is_zero_outside_the_regions_and_unchanged_inside(cmu_runs: dict[str, Any]) -> None:
    report = _report(cmu_runs["regions"])
    a, b = shapely.Polygon(REGION_A[0]), shapely.Polygon(REGION_B[0], REGION_B[1:])
    inside = _model_inside([shapely.union_all([a, b])], report)[0]
    mask, full = _mask(cmu_runs["regions"]), _mask(cmu_runs["full"])
    assert mask.shape == inside.shape == full.shape
    assert not mask[~inside].any()  # 0 outside the regions
    assert (mask[inside] > 0).sum() > 1000
    assert (mask[inside] == full[inside]).mean() > 0.99  # inside, the same classes as a whole-slide run


def test_areas_per_region_sum_to_the_whole_slide_areas_inside_them(cmu_runs: dict[str, Any]) -> None:
    report = _report(cmu_runs["regions"])
    regions = report["regions"]
    assert regions["kind"] == "geojson" and regions["file"] == str(cmu_runs["roi"])
    assert [(r["index"], r["name"], r["id"]) for r in regions["regions"]] == [(0, "tumour block", "3f1c"),
                                                                              (1, "Margin", None)]
    classes = [c["name"] for c in report["model"]["classes"]]
    for name in classes[1:]:  # the regions do not overlap: their areas add up to the slide's (0 outside them)
        assert sum(r["classes"][name]["pixels"] for r in regions["regions"]) == report["areas"][name]["pixels"]
        assert sum(r["classes"][name]["area_mm2"] for r in regions["regions"]) == pytest.approx(
            report["areas"][name]["area_mm2"])
    # each region's counts, recounted from mask.tif (tifffile) with shapely's point-in-polygon
    geoms = [shapely.Polygon(REGION_A[0]), shapely.Polygon(REGION_B[0], REGION_B[1:])]
    mask = _mask(cmu_runs["regions"])
    for r, inside in zip(regions["regions"], _model_inside(geoms, report), strict=True):
        counts = np.bincount(mask[inside], minlength=len(classes))
        assert [r["classes"][c]["pixels"] for c in classes] == counts.tolist()
        assert r["pixels"] == int(inside.sum())
        assert r["area_mm2"] == pytest.approx(inside.sum() * (report["mask"]["mpp"] / 1000) ** 2)
    a, b = regions["regions"]
    assert a["classes"]["background"]["pixels"] < 0.5 * a["pixels"]  # on tissue
    assert b["classes"]["background"]["pixels"] > 0.3 * b["pixels"]  # partly on glass
    drawn_b = shapely.Polygon(REGION_B[0], REGION_B[1:]).area * (report["slide"]["mpp"] / 1000) ** 2
    assert b["area_mm2"] == pytest.approx(drawn_b * 1000.2 / 1300.6, rel=0.02)  # clipped at the slide's edge


def test_geojson_polygons_lie_inside_the_regions(cmu_runs: dict[str, Any]) -> None:
    report = _report(cmu_runs["regions"])
    union = shapely.union_all([shapely.Polygon(REGION_A[0]), shapely.Polygon(REGION_B[0], REGION_B[1:])])
    grown = union.buffer(report["mask"]["l0_per_px_x"])  # one mask pixel
    feats = json.loads((cmu_runs["regions"] / "mask.geojson").read_text())["features"]
    geoms = [shapely.from_geojson(json.dumps(f["geometry"])) for f in feats]
    assert len(geoms) > 3
    assert all(grown.contains(g) for g in geoms)


def test_a_changed_regions_file_reruns_the_slide(cmu_runs: dict[str, Any], tmp_path: Path) -> None:
    slide, bundle = cmu_runs["slide"], cmu_runs["bundle"]
    roi = tmp_path / "r.geojson"
    roi.write_text(json.dumps(_features()[:1]))
    out = tmp_path / "out"
    assert _segment(slide, bundle, out, "--roi", str(roi)).exit_code == 0
    written = (out / slide.stem / "report.json").stat().st_mtime_ns
    assert _segment(slide, bundle, out, "--roi", str(roi)).exit_code == 0
    assert (out / slide.stem / "report.json").stat().st_mtime_ns == written  # skipped: the same regions
    first = _report(out / slide.stem)["regions"]["sha256"]
    roi.write_text(json.dumps(_features()[1:]))  # other regions, same file name
    result = _segment(slide, bundle, out, "--roi", str(roi))
    assert result.exit_code == 0, result.output
    again = _report(out / slide.stem)
    assert again["regions"]["sha256"] != first and [r["name"] for r in again["regions"]["regions"]] == ["Margin"]
    assert again["run"]["skip_key"]["options"]["roi"]["sha256"] == again["regions"]["sha256"]


def test_one_regions_file_for_several_slides_is_refused(cmu_runs: dict[str, Any], synthetic_tiff: Path,
                                                        tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["segment", str(cmu_runs["slide"]), str(synthetic_tiff), "--model",
                                      str(cmu_runs["bundle"]), "--out", str(tmp_path / "o"), "--roi",
                                      str(cmu_runs["roi"])])
    assert result.exit_code == 2
    assert "--roi" in result.output and "2 slides" in result.output and "roi column" in result.output
    missing = _segment(cmu_runs["slide"], cmu_runs["bundle"], tmp_path / "o", "--roi", str(tmp_path / "no.json"))
    assert missing.exit_code != 0 and "no such regions file" in missing.output


def test_a_non_polygon_feature_fails_the_slide_in_one_line(cmu_runs: dict[str, Any], tmp_path: Path) -> None:
    roi = tmp_path / "pins.geojson"
    roi.write_text(json.dumps(_features() + [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]},
                                             "properties": {"name": "pin"}}]))
    result = _segment(cmu_runs["slide"], cmu_runs["bundle"], tmp_path / "o", "--roi", str(roi))
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if "error" in line]
    assert len(errors) == 1 and "feature 2 ('pin') is a Point, not a Polygon or MultiPolygon" in errors[0]
    assert str(roi) in errors[0]


def _png_mask(path: Path, shape: tuple[int, int], box: tuple[int, int, int, int]) -> Path:
    mask = np.zeros(shape, dtype=np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 255
    pyvips.Image.new_from_array(mask).pngsave(str(path))
    return path


def test_a_list_gives_each_slide_its_regions_and_a_bad_roi_fails_its_row(cmu_runs: dict[str, Any],
                                                                         synthetic_tiff: Path, tmp_path: Path) -> None:
    mask = _png_mask(tmp_path / "left.png", (96, 128), (0, 0, 64, 96))  # the slide's aspect ratio: its left half
    listing = tmp_path / "slides.csv"
    with open(listing, "w", newline="") as f:
        csv.writer(f).writerows([["path", "roi"], [str(synthetic_tiff), "left.png"],
                                 [str(cmu_runs["slide"]), "missing.geojson"]])
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["segment", "--list", str(listing), "--model", str(cmu_runs["bundle"]), "--out",
                                      str(out), "--backend", "ort-cpu", "--workers", "1", "--formats", FORMATS, "-q"])
    assert result.exit_code == 1
    assert "line 3: roi 'missing.geojson': no such file" in result.output
    report = _report(out / "synthetic")
    assert report["regions"]["kind"] == "mask" and report["regions"]["file"] == str(mask)
    assert report["tile_counts"]["run"] < report["tile_counts"]["tissue"]
    m = _mask(out / "synthetic")
    assert not m[:, m.shape[1] // 2 + 1:].any() and m[:, : m.shape[1] // 2].any()


def test_the_api_takes_roi_and_checks_it(cmu_runs: dict[str, Any], synthetic_tiff: Path, tmp_path: Path) -> None:
    from slidefuse.api import load_model

    roi = _png_mask(tmp_path / "top.png", (96, 128), (0, 0, 128, 48))
    with load_model(cmu_runs["bundle"], backend="ort-cpu", workers=1, formats="tiff,report") as model:
        with pytest.raises(UsageError, match="roi 5: expected the path") as err:
            model.segment(synthetic_tiff, out=tmp_path / "o", roi=5)  # type: ignore[arg-type]
        assert err.value.field == "roi"
        with pytest.raises(UsageError, match="no such file"):
            model.segment(synthetic_tiff, out=tmp_path / "o", roi=tmp_path / "absent.png")
        res = model.segment(synthetic_tiff, out=tmp_path / "o", roi=roi)
    report = res.report
    assert report["regions"]["regions"][0]["name"] == "top"
    m = _mask(res.out_dir)
    assert not m[m.shape[0] // 2 + 1:].any()


def test_all_tiles_with_regions_runs_every_tile_touching_them(cmu_runs: dict[str, Any], synthetic_tiff: Path,
                                                               tmp_path: Path) -> None:
    from slidefuse.api import load_model
    from slidefuse.runtime.grid import TileGrid

    roi = _png_mask(tmp_path / "corner.png", (96, 128), (0, 0, 32, 24))  # the top-left quarter: glass and tissue
    with load_model(cmu_runs["bundle"], backend="ort-cpu", workers=1, formats="report", all_tiles=True) as model:
        report = model.segment(synthetic_tiff, out=tmp_path / "o", roi=roi).report
    counts, extra, mask = report["tile_counts"], report["extra"], report["mask"]
    grid = TileGrid(mask["width"], mask["height"], extra["tile"], extra["overlap"], margin=extra["margin"])
    region = (mask["width"] / 4, mask["height"] / 4)  # the quarter in model px (x1, y1), from (0, 0)

    def touching(grow: float) -> int:
        return sum(x < region[0] + grow and y < region[1] + grow and x + w > -grow and y + h > -grow
                   for x, y, w, h in grid.tile_boxes())

    assert touching(0.0) <= counts["run"] <= touching(2.0) < counts["grid"]  # (grown by the thumbnail's margin)
    assert counts["roi"] < counts["run"]  # fewer touch tissue inside the region


def test_regions_drawn_in_qupaths_frame_land_on_the_same_tissue(bundle_dir: Path, tmp_path: Path) -> None:
    """A slide with openslide.bounds (QuPath shows it cropped): a region drawn around a disc in QuPath's pixels
    holds the disc; read as level 0 instead (--geojson-frame level0), the same coordinates miss it."""
    from slidefuse.runtime.backends import open_backend
    from slidefuse.runtime.bundle import load_bundle
    from slidefuse.runtime.segment import SegmentOptions, finish_slide, infer_slide, plan_slide

    from .test_outputs_geojson_frame import BOUNDS, _BoundsSlide, _NoProgress

    h, w, cx, cy, r = 1600, 2400, 1900, 1100, 160  # a purple (haematoxylin) disc centred at level-0 (cx, cy)
    img = np.full((h, w, 3), 245, dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < r**2] = (60, 40, 160)
    bx, by = int(BOUNDS["openslide.bounds-x"]), int(BOUNDS["openslide.bounds-y"])
    box = [[[cx - bx - 250.3, cy - by - 250.3], [cx - bx + 250.3, cy - by - 250.3], [cx - bx + 250.3, cy - by + 250.3],
            [cx - bx - 250.3, cy - by + 250.3], [cx - bx - 250.3, cy - by - 250.3]]]
    roi = tmp_path / "disc.geojson"
    roi.write_text(json.dumps([{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": box},
                                "properties": {"name": "disc"}}]))
    bundle = load_bundle(bundle_dir)
    found = {}
    with open_backend("ort-cpu", bundle, threads=1) as backend:
        for frame in ("qupath", "level0"):
            options = SegmentOptions(backend="ort-cpu", workers=1, formats=frozenset({"report"}), roi=roi,
                                     geojson_frame=frame, qc="off")  # the disc's pure colour reads as marker ink
            plan = plan_slide(Path("bounded"), bundle, options, tmp_path / frame, reader=_BoundsSlide(img, 0.5))
            finish_slide(infer_slide(plan, bundle, options, backend, _NoProgress()), bundle, options)
            found[frame] = _report(tmp_path / frame)["regions"]["regions"][0]["classes"]["haematoxylin"]["area_mm2"]
    disc_mm2 = np.pi * r**2 * (0.5 / 1000) ** 2
    assert found["qupath"] == pytest.approx(disc_mm2, rel=0.05)
    assert found["level0"] < 0.01 * disc_mm2
