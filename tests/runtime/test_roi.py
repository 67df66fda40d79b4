"""Regions of interest, read and rasterised: the three GeoJSON layouts QuPath and others write, region names,
holes, repaired polygons, mask images and their pixel size, the one-line refusals (naming the file and the
feature), placement in QuPath's frame, and a band-wise rasterisation that matches shapely at every pixel centre."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pyvips
import shapely

from slidefuse.runtime.roi import RoiError, place, read_roi
from slidefuse.runtime.roi_raster import PolygonRaster, SlideRegions, load_regions

from .test_outputs_common import make_slide


def _feature(coords: Any, kind: str = "Polygon", **props: Any) -> dict[str, Any]:
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": coords},
            "properties": {"objectType": "annotation", **props}}


def _square(x: float, y: float, s: float) -> list[list[list[float]]]:
    return [[[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]]


def _write(tmp_path: Path, doc: Any, name: str = "roi.geojson") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def _reference(geom: Any, shape: tuple[int, int], scale: tuple[float, float] = (1.0, 1.0)) -> tuple[Any, Any]:
    """(inside, tie) at every pixel centre of a grid, by shapely: `geom` scaled by `scale`; `tie`: centres on the
    boundary, where either answer is right."""
    h, w = shape
    g = shapely.transform(geom, lambda xy: xy * scale)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    return shapely.contains_xy(g, xx, yy), shapely.intersects_xy(g.boundary, xx, yy)


def test_the_three_layouts_and_the_name_rules(tmp_path: Path) -> None:
    feats = [_feature(_square(10, 10, 5), name="tumour"),
             _feature(_square(30, 10, 5), classification={"name": "Stroma", "color": [1, 2, 3]}),
             {**_feature(_square(50, 10, 5)), "id": "0f1e-uuid"},
             _feature(_square(70, 10, 5))]
    for doc in ({"type": "FeatureCollection", "features": feats}, feats):
        roi = read_roi(_write(tmp_path, doc))
        assert [(r.index, r.name) for r in roi.regions] == [(0, "tumour"), (1, "Stroma"), (2, "0f1e-uuid"),
                                                           (3, "region-4")]
        assert roi.kind == "geojson" and len(roi.digest) == 64
        assert [r.feature_id for r in roi.regions] == [None, None, "0f1e-uuid", None]
    one = read_roi(_write(tmp_path, feats[0], "one.json"))
    assert [r.name for r in one.regions] == ["tumour"] and one.regions[0].geometry.area == 25


def test_holes_and_multipolygons_are_honoured(tmp_path: Path) -> None:
    ring = [[[10.3, 10.3], [60.7, 10.3], [60.7, 50.2], [10.3, 50.2], [10.3, 10.3]],
            [[20.1, 20.1], [40.9, 20.1], [40.9, 40.4], [20.1, 40.4], [20.1, 20.1]]]
    doc = _feature([ring, _square(70.2, 5.4, 10)], kind="MultiPolygon", name="two parts")
    (region,) = read_roi(_write(tmp_path, doc)).regions
    mask = PolygonRaster(region.geometry, (1.0, 1.0)).rows(0, 60, 90)
    assert not mask[30, 30] and mask[15, 15] and mask[10, 75]  # the hole, the shell, the second part
    inside, tie = _reference(region.geometry, (60, 90))
    assert np.array_equal(mask[~tie], inside[~tie])


@pytest.mark.parametrize(("seed", "loop_spans"), [(0, 8192), (1, 8192), (2, 8192), (0, 0), (1, 0)])
def test_band_rasterisation_matches_shapely_at_every_pixel_centre(seed: int, loop_spans: int,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import slidefuse.runtime.roi_raster as roi_raster

    monkeypatch.setattr(roi_raster, "LOOP_SPANS", loop_spans)  # span by span, or the toggle-and-xor pass
    rng = np.random.default_rng(seed)
    blobs = [shapely.Point(rng.uniform(0, 300), rng.uniform(0, 200)).buffer(rng.uniform(5, 60)) for _ in range(6)]
    star = shapely.Polygon([(150 + r * np.cos(a), 100 + r * np.sin(a))
                            for a, r in zip(np.linspace(0, 2 * np.pi, 40, endpoint=False),
                                            rng.uniform(20, 90, 40), strict=True)])
    geom = shapely.union_all(blobs).symmetric_difference(star)  # holes, islands, concave edges
    scale = (0.73, 1.31)
    raster = PolygonRaster(geom, scale)
    bands = np.concatenate([raster.rows(y, min(y + 17, 270), 230) for y in range(0, 270, 17)])
    inside, tie = _reference(geom, (270, 230), scale)
    assert inside.sum() > 1000
    assert np.array_equal(bands[~tie], inside[~tie])
    assert np.array_equal(bands, raster.rows(0, 270, 230))  # bands agree with one call


def test_an_invalid_polygon_is_repaired_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bowtie = [[[0, 0], [20, 20], [20, 0], [0, 20], [0, 0]]]
    with caplog.at_level(logging.WARNING, logger="slidefuse.runtime.roi"):
        (region,) = read_roi(_write(tmp_path, [_feature(bowtie, name="bow")])).regions
    assert region.geometry.is_valid and region.geometry.area == pytest.approx(200)
    assert "feature 0 ('bow')" in caplog.text and "make_valid" in caplog.text


@pytest.mark.parametrize(("content", "expected"), [
    ("", "empty file"),
    ("  \n", "empty file"),
    ('{"type": "FeatureCollection", "features": []}', "no features"),
    ("[]", "no features"),
    ('{"type": "FeatureCollection", "features": [', "not valid JSON (line 1, column"),
    ('{"type": "Polygon", "coordinates": []}', "a 'Polygon', not a FeatureCollection"),
    ('[{"type": "Feature", "properties": {}}]', "feature 0 ('region-1') is a feature without a geometry"),
    ('[3]', "item 0 is not a GeoJSON Feature"),
])
def test_unusable_files_are_refused_in_one_line(tmp_path: Path, content: str, expected: str) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(RoiError) as err:
        read_roi(path)
    message = str(err.value)
    assert expected in message and str(path) in message and "\n" not in message


def test_a_non_polygon_feature_is_named(tmp_path: Path) -> None:
    feats = [_feature(_square(0, 0, 5), name="ok"), _feature([3, 4], kind="Point", name="a pin"),
             _feature([[0, 0], [5, 5]], kind="LineString")]
    with pytest.raises(RoiError, match=r"feature 1 \('a pin'\) is a Point, not a Polygon or MultiPolygon"):
        read_roi(_write(tmp_path, feats))
    with pytest.raises(RoiError, match=r"feature 0 \('region-1'\) is a LineString"):
        read_roi(_write(tmp_path, feats[2:]))


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RoiError, match="no such file"):
        read_roi(tmp_path / "absent.geojson")


def test_a_region_outside_the_slide_is_refused_and_others_are_clipped(tmp_path: Path) -> None:
    slide = make_slide(1000, 800, 0.5)
    inside = _feature([[[-50, -50], [100, -50], [100, 100], [-50, 100], [-50, -50]]], name="corner")
    outside = _feature(_square(1200, 100, 50), name="elsewhere")
    roi = read_roi(_write(tmp_path, [inside, outside]))
    with pytest.raises(RoiError, match=r"feature 1 \('elsewhere'\) lies entirely outside the slide"):
        place(roi, (slide.width, slide.height), slide.mpp, (0.0, 0.0))
    (corner,) = place(read_roi(_write(tmp_path, [inside], "in.json")), (1000, 800), 0.5, (0.0, 0.0))
    assert corner.geometry.area == pytest.approx(100 * 100)  # clipped to the slide


def test_qupath_frame_regions_are_shifted_by_the_bounds_offset(tmp_path: Path) -> None:
    bounds = {"openslide.bounds-x": "300", "openslide.bounds-y": "200"}
    slide = dataclasses.replace(make_slide(2000, 1600, 0.5), properties=bounds)
    path = _write(tmp_path, [_feature(_square(100, 50, 40), name="r")])
    qupath = load_regions(path, slide, (500, 400), "qupath")
    level0 = load_regions(path, slide, (500, 400), "level0")
    assert qupath.regions[0].geometry.bounds == (400.0, 250.0, 440.0, 290.0)
    assert level0.regions[0].geometry.bounds == (100.0, 50.0, 140.0, 90.0)
    assert qupath.offset_l0 == (300.0, 200.0)


def _save_mask(array: np.ndarray, path: Path, mpp: float | None = None) -> Path:
    image = pyvips.Image.new_from_array(array.astype(np.uint8))
    if path.suffix == ".png":
        image = image.copy(xres=1000.0 / mpp, yres=1000.0 / mpp) if mpp else image
        image.pngsave(str(path))
    else:
        kw = {"xres": 1000.0 / mpp, "yres": 1000.0 / mpp, "resunit": "cm"} if mpp else {}
        image.tiffsave(str(path), **kw)
    return path


def test_a_mask_with_the_slides_aspect_ratio_covers_the_slide(tmp_path: Path) -> None:
    mask = np.zeros((80, 100), dtype=np.uint8)
    mask[20:40, 10:30] = 255
    path = _save_mask(mask, tmp_path / "blocks.png")
    slide = make_slide(2000, 1600, 0.5)
    roi = read_roi(path)
    assert roi.kind == "mask" and roi.mask_mpp is None and [r.name for r in roi.regions] == ["blocks"]
    (region,) = place(roi, (2000, 1600), 0.5, (0.0, 0.0))
    assert region.geometry.bounds == (200.0, 400.0, 600.0, 800.0)  # 20 l0 px per mask px
    placed = load_regions(path, slide, (500, 400), "qupath")
    model = PolygonRaster(placed.regions[0].geometry, (0.25, 0.25)).rows(0, 400, 500)
    expected = np.repeat(np.repeat(mask != 0, 5, axis=0), 5, axis=1)  # nearest neighbour, 5 model px per mask px
    assert np.array_equal(model, expected)


def test_a_mask_takes_its_pixel_size_from_its_resolution(tmp_path: Path) -> None:
    mask = np.zeros((30, 30), dtype=np.uint8)
    mask[5:10, 5:10] = 1
    path = _save_mask(mask, tmp_path / "m.tif", mpp=8.0)  # 16 l0 px per mask px on a 0.5 um/px slide
    (region,) = place(read_roi(path), (2000, 1600), 0.5, (0.0, 0.0))
    assert region.geometry.bounds == pytest.approx((80.0, 80.0, 160.0, 160.0))


def test_ambiguous_or_unplaceable_masks_are_refused(tmp_path: Path) -> None:
    mask = np.zeros((80, 100), dtype=np.uint8)
    mask[1, 1] = 1
    no_size = read_roi(_save_mask(mask, tmp_path / "other-shape.png"))
    with pytest.raises(RoiError, match="no pixel size in its resolution tags and not the slide's aspect ratio"):
        place(no_size, (2000, 2000), 0.5, (0.0, 0.0))
    tagged = read_roi(_save_mask(mask, tmp_path / "tagged.tif", mpp=4.0))  # the shape says 10 um/px
    with pytest.raises(RoiError, match="ambiguous mask"):
        place(tagged, (2000, 1600), 0.5, (0.0, 0.0))
    with pytest.raises(RoiError, match="no nonzero pixel"):
        read_roi(_save_mask(np.zeros((8, 10)), tmp_path / "empty.png"))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01 not an image")
    with pytest.raises(RoiError, match="neither GeoJSON nor an image"):
        read_roi(junk)


def test_counts_per_region_match_a_brute_force_count(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    h, w = 300, 400
    raw = rng.integers(0, 3, (h, w), dtype=np.uint8)
    raw_path = tmp_path / "mask.raw"
    raw.tofile(raw_path)
    feats = [_feature(_square(100.3, 100.3, 600), name="a"),
             _feature([[[900.2, 300.1], [1500.7, 700.3], [1000.9, 1100.6], [900.2, 300.1]]], name="b"),
             _feature(_square(500.5, 500.5, 300), name="overlaps a")]
    slide = make_slide(1600, 1200, 0.5)
    regions = load_regions(_write(tmp_path, feats), slide, (w, h), "level0")
    assert isinstance(regions, SlideRegions)
    import slidefuse.runtime.roi_raster as roi_raster

    counted = dataclasses.replace(regions).count(raw_path, 3)
    small = roi_raster.BAND_BYTES
    try:
        roi_raster.BAND_BYTES = 7 * w  # several bands
        banded = regions.count(raw_path, 3)
    finally:
        roi_raster.BAND_BYTES = small
    for r, c, b in zip(regions.regions, counted.regions, banded.regions, strict=True):
        inside, tie = _reference(r.geometry, (h, w), (w / 1600, h / 1200))
        assert not tie.any()
        expected = np.bincount(raw[inside], minlength=3)
        assert np.array_equal(c.class_pixels, expected) and np.array_equal(b.class_pixels, expected)
        assert c.pixels == int(inside.sum()) and c.name == r.name
