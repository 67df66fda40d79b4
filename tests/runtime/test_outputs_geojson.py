"""mask.geojson: exact polygonisation, validity, holes, QuPath properties, level-0 frame, and the done-when
check: rasterised back at the mask's resolution it agrees with mask.tif per class (IoU >= 0.95) on the
real CMU slide."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from scipy import ndimage

from slidefuse.runtime.outputs import OutputOptions, write_outputs
from slidefuse.runtime.outputs.geojson import write_geojson
from slidefuse.runtime.outputs.polygons import polygonize

from .test_outputs_common import (
    CLASSES,
    blobby_mask,
    cmu_mask,
    iou,
    make_bundle,
    make_result,
    make_slide,
    rasterize_geojson,
)


def _raster(polys: np.ndarray, h: int, w: int) -> np.ndarray:
    """bool [h, w]: pixel centres covered by any of the grid_xy polygons."""
    ys, xs = np.mgrid[0:h, 0:w]
    out = np.zeros(h * w, bool)
    for g in polys:
        out |= shapely.contains_xy(g, xs.ravel() + 0.5, ys.ravel() + 0.5)
    return out.reshape(h, w)


@pytest.mark.parametrize("outline", ["edges", "midpoints"])
@pytest.mark.parametrize("seed", range(6))
def test_polygonize_is_exact_on_random_masks(seed: int, outline: str) -> None:
    rng = np.random.default_rng(seed)
    h, w = rng.integers(5, 40, 2)
    fg = rng.random((h, w)) < rng.uniform(0.2, 0.8)
    polys = polygonize(fg, outline=outline)
    _, n = ndimage.label(fg)  # 4-connected regions
    assert len(polys) == n
    assert shapely.is_valid(polys).all()
    if outline == "edges":
        assert sum(g.area for g in polys) == pytest.approx(fg.sum())
    else:  # corners are cut or filled by 1/8 px each
        assert sum(g.area for g in polys) == pytest.approx(fg.sum(), abs=fg.sum() / 2)
    np.testing.assert_array_equal(_raster(polys, h, w), fg)


def test_polygonize_keeps_holes_and_islands() -> None:
    fg = np.zeros((20, 20), bool)
    fg[2:18, 2:18] = True
    fg[5:15, 5:15] = False  # hole
    fg[8:12, 8:12] = True  # island inside the hole: a separate region
    polys = sorted(polygonize(fg, outline="edges"), key=lambda g: -g.area)
    assert len(polys) == 2
    outer, island = polys
    assert len(outer.interiors) == 1
    assert outer.area == 16 * 16 - 10 * 10
    assert island.area == 16 and len(island.interiors) == 0


def test_polygonize_diagonal_pinch_is_valid() -> None:
    # One 4-connected region whose background pocket escapes diagonally: its boundary touches itself.
    fg = np.array([[1, 1, 1], [1, 0, 1], [0, 1, 1]], bool)
    for outline in ("edges", "midpoints"):
        polys = polygonize(fg, outline=outline)
        assert len(polys) == 1 and polys[0].is_valid
        np.testing.assert_array_equal(_raster(polys, 3, 3), fg)


def test_geojson_features_are_qupath_annotations_in_level0(tmp_path) -> None:
    mask = blobby_mask(300, 400, seed=1)
    result = make_result(mask, tmp_path / "m.raw", mpp=1.0)
    slide = make_slide(800, 600, 0.5)  # 2 level-0 px per mask px
    info = write_geojson(result, slide, CLASSES, tmp_path / "mask.geojson")
    fc = json.loads((tmp_path / "mask.geojson").read_text())
    assert fc["type"] == "FeatureCollection" and fc["features"]
    names = set()
    for f in fc["features"]:
        assert f["type"] == "Feature"
        props = f["properties"]
        assert props["objectType"] == "annotation"
        cls = props["classification"]
        assert cls["name"] in ("tumour", "stroma")  # never the background
        assert cls["color"] == list(CLASSES[[c.name for c in CLASSES].index(cls["name"])].color)
        names.add(cls["name"])
        geom = shapely.from_geojson(json.dumps(f["geometry"]))
        assert geom.geom_type in ("Polygon", "MultiPolygon") and geom.is_valid
        x0, y0, x1, y1 = geom.bounds
        assert 0 <= x0 and 0 <= y0 and x1 <= 800 and y1 <= 600
    assert names == {"tumour", "stroma"}
    assert sum(info["features"].values()) == len(fc["features"])
    # Some region has a hole (the blobby mask has islands of class 2 in class 1).
    geoms = [f["geometry"] for f in fc["features"]]
    assert any(g["type"] == "Polygon" and len(g["coordinates"]) > 1 for g in geoms)
    # Simplification stays close to the pixel outlines: area per class within 2 % of the pixel counts.
    for c, name in ((1, "tumour"), (2, "stroma")):
        area_l0 = sum(
            shapely.from_geojson(json.dumps(f["geometry"])).area
            for f in fc["features"]
            if f["properties"]["classification"]["name"] == name
        )
        assert area_l0 / 4 == pytest.approx((mask == c).sum(), rel=0.02)


def test_geojson_of_empty_mask_is_an_empty_collection(tmp_path) -> None:
    result = make_result(np.zeros((50, 60), np.uint8), tmp_path / "m.raw", mpp=1.0)
    write_geojson(result, make_slide(60, 50, 1.0), CLASSES, tmp_path / "mask.geojson")
    assert json.loads((tmp_path / "mask.geojson").read_text())["features"] == []


def test_geojson_on_a_coarser_grid_records_its_resolution(tmp_path) -> None:
    mask = blobby_mask(400, 600, seed=2)
    result = make_result(mask, tmp_path / "m.raw", mpp=0.5)
    slide = make_slide(1200, 800, 0.25)
    info = write_geojson(result, slide, CLASSES, tmp_path / "mask.geojson", max_pixels=150 * 100)
    assert (info["grid_width"], info["grid_height"]) == (150, 100)
    assert info["grid_mpp_x"] == pytest.approx(2.0) and info["downsampling"] == "mode of 4x4 blocks"
    back = rasterize_geojson(tmp_path / "mask.geojson", slide, 150, 100, 3)
    # Compare with the mask reduced to the same grid by the majority of each 4x4 block.
    blocks = mask.reshape(100, 4, 150, 4).transpose(0, 2, 1, 3).reshape(100, 150, 16)
    counts = np.stack([(blocks == c).sum(-1) for c in range(3)], -1)
    ref = counts.argmax(-1)
    for c in (1, 2):
        assert iou(back == c, ref == c) >= 0.9


def test_geojson_matches_mask_tiff_on_the_real_cmu_slide(tmp_path, cmu_slide) -> None:
    """Done-when: the GeoJSON rasterised at the mask's resolution vs mask.tif, IoU >= 0.95 per class."""
    import pyvips

    mask, thumb, slide = cmu_mask(cmu_slide, mpp=2.0)
    result = make_result(mask, tmp_path / "m.raw", mpp=2.0, thumbnail=thumb)
    formats = OutputOptions(formats=frozenset({"tiff", "geojson"}))
    paths = write_outputs(result, slide, make_bundle(tmp_path), tmp_path / "out", formats)
    tif = pyvips.Image.new_from_file(str(paths["tiff"])).numpy()
    np.testing.assert_array_equal(tif, mask)
    h, w = tif.shape
    back = rasterize_geojson(paths["geojson"], slide, w, h, 3)
    for c in (1, 2):
        assert (tif == c).sum() > 1000  # the classes are really there
        assert iou(back == c, tif == c) >= 0.95, c


def test_a_region_with_hundreds_of_holes_is_simplified_validly(tmp_path) -> None:
    """Over BIG_POLYGON_HOLES holes, a region is simplified ring by ring (GEOS' topology-preserving simplifier
    is super-linear in holes); the result is still valid, keeps its holes and its area."""
    from slidefuse.runtime.outputs.polygons import BIG_POLYGON_HOLES

    mask = np.ones((400, 400), np.uint8)
    mask[5:395:12, 5:395:12] = 0  # 33 x 33 = 1089 one-pixel holes of background in one tumour region
    mask[7:395:12, 7:395:12] = 0
    mask[6:395:12, 6:395:12] = 0
    result = make_result(mask, tmp_path / "m.raw", mpp=1.0)
    write_geojson(result, make_slide(400, 400, 1.0), CLASSES, tmp_path / "mask.geojson")
    fc = json.loads((tmp_path / "mask.geojson").read_text())
    tumour = [shapely.from_geojson(json.dumps(f["geometry"])) for f in fc["features"]
              if f["properties"]["classification"]["name"] == "tumour"]
    assert all(g.is_valid for g in tumour)
    holes = sum(len(p.interiors) for g in tumour for p in getattr(g, "geoms", [g]))
    assert holes > BIG_POLYGON_HOLES
    area = sum(g.area for g in tumour)
    assert abs(area - int((mask == 1).sum())) <= 0.02 * (mask == 1).sum()


def test_midpoint_polygons_are_valid_by_construction() -> None:
    # polygonize(outline="midpoints") returns its polygons unchecked (GEOS' validity check of a region with a
    # million edges costs 100 MB): check the construction's claim on noisy masks full of diagonal pinches.
    rng = np.random.default_rng(7)
    for _ in range(150):
        h, w = rng.integers(3, 60, 2)
        fg = rng.random((h, w)) < rng.uniform(0.3, 0.7)
        polys = polygonize(fg, outline="midpoints")
        assert shapely.is_valid(polys).all()
        np.testing.assert_array_equal(_raster(polys, h, w), fg)
