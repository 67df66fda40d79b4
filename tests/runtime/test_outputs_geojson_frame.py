"""mask.geojson in QuPath's frame: a slide with `openslide.bounds-x/y` (MIRAX and others, which QuPath crops to
those bounds) gets its annotations shifted by exactly the bounds offset, checked against the slide's own
properties and against where the tissue is; `level0` keeps level-0 coordinates; report.json records the
frame; a rerun asking for the other frame rewrites the file; `--geojson-frame` on the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import pyvips
import shapely

from slidefuse.runtime.outputs import OutputOptions, write_outputs
from slidefuse.runtime.outputs.geojson import frame_offset
from slidefuse.runtime.segment import SegmentOptions, finish_slide, infer_slide, plan_slide
from slidefuse.runtime.slide import InMemorySlide
from slidefuse.runtime.slide.metadata import report_properties

from .onnx_models import make_bundle as make_onnx_bundle
from .test_outputs_common import blobby_mask, current, make_bundle, make_result, make_slide

BOUNDS = {"openslide.bounds-x": "1536", "openslide.bounds-y": "768", "openslide.bounds-width": "2000",
          "openslide.bounds-height": "1200"}


def _coords(path: Path) -> list[np.ndarray]:
    feats = json.loads(path.read_text())["features"]
    return [np.asarray(shapely.get_coordinates(shapely.from_geojson(json.dumps(f["geometry"])))) for f in feats]


def test_qupath_frame_subtracts_exactly_the_bounds_offset(tmp_path: Path) -> None:
    mask = blobby_mask(150, 200, seed=5)
    bundle = make_bundle(tmp_path)
    slide = dataclasses.replace(make_slide(3200, 2400, 0.25), properties=dict(BOUNDS))
    paths = {}
    for frame in ("qupath", "level0"):
        result = make_result(mask, tmp_path / f"{frame}.raw", mpp=4.0)
        options = OutputOptions(formats=frozenset({"geojson"}), geojson_frame=frame)
        paths[frame] = write_outputs(result, slide, bundle, tmp_path / frame, options)["geojson"]
    qupath, level0 = _coords(paths["qupath"]), _coords(paths["level0"])
    assert len(qupath) == len(level0) > 3
    offset = np.array([float(slide.properties["openslide.bounds-x"]), float(slide.properties["openslide.bounds-y"])])
    for q, l0 in zip(qupath, level0, strict=True):
        np.testing.assert_allclose(q + offset, l0, atol=0.011)  # both rounded to 2 decimals
    report = json.loads((tmp_path / "qupath" / "report.json").read_text())["outputs"]["geojson"]
    assert report["frame"] == "qupath" and report["frame_offset_l0"] == [1536.0, 768.0]
    assert report["frame_offset_source"] == "openslide.bounds-x/y"
    other = json.loads((tmp_path / "level0" / "report.json").read_text())["outputs"]["geojson"]
    assert other["frame"] == "level0" and other["frame_offset_l0"] == [0.0, 0.0]


def test_without_bounds_qupath_is_level0() -> None:
    assert frame_offset(make_slide(100, 100, 0.5), "qupath")[0] == (0.0, 0.0)
    with pytest.raises(Exception, match="geojson"):
        frame_offset(make_slide(100, 100, 0.5), "pixels")


def test_a_rerun_in_the_other_frame_is_not_current(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    result = make_result(blobby_mask(60, 80, seed=1), tmp_path / "m.raw", mpp=4.0)
    geojson = frozenset({"geojson"})
    write_outputs(result, make_slide(320, 240, 1.0), bundle, tmp_path / "o", OutputOptions(formats=geojson))
    assert current(tmp_path / "o", geojson)
    assert not current(tmp_path / "o", geojson, geojson_frame="level0")


def test_openslide_bounds_reach_the_slide_properties() -> None:
    image = pyvips.Image.black(4, 4)
    for k, v in BOUNDS.items():
        image.set_type(pyvips.GValue.gstr_type, k, v)
    assert {k: report_properties(image)[k] for k in BOUNDS} == BOUNDS


class _BoundsSlide(InMemorySlide):
    """An in-memory slide that reports bounds properties, as OpenSlide does for a MIRAX slide."""

    def __init__(self, array: np.ndarray, mpp: float) -> None:
        super().__init__(array, mpp, name="bounded")
        self.info = dataclasses.replace(self.info, properties=dict(BOUNDS))


def test_through_the_reader_contract_annotations_land_on_the_tissue_in_qupaths_frame(tmp_path: Path) -> None:
    h, w, cx, cy, r = 1600, 2400, 1900, 1100, 160  # a purple (haematoxylin) disc centred at level-0 (cx, cy)
    img = np.full((h, w, 3), 245, dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < r**2] = (60, 40, 160)
    bundle = make_onnx_bundle(tmp_path / "bundle", tile_size=64, mpp=2.0, overlap=16)
    # qc off: the pure blue-purple disc is the colour of blue marker ink, which QC would exclude
    options = SegmentOptions(backend="ort-cpu", workers=1, formats=frozenset({"geojson"}), qc="off")
    from slidefuse.runtime.backends import open_backend

    with open_backend("ort-cpu", bundle, threads=1) as backend:
        plan = plan_slide(Path("bounded"), bundle, options, tmp_path / "out", reader=_BoundsSlide(img, 0.5))
        done = infer_slide(plan, bundle, options, backend, progress=_NoProgress())
        finish_slide(done, bundle, options)
    feats = json.loads((tmp_path / "out" / "mask.geojson").read_text())["features"]
    blob = [shapely.from_geojson(json.dumps(f["geometry"])) for f in feats
            if f["properties"]["classification"]["name"] == "haematoxylin"]
    disc = max(blob, key=lambda g: g.area)  # (the toy classifier also marks a few specks at tile corners)
    bx, by = int(BOUNDS["openslide.bounds-x"]), int(BOUNDS["openslide.bounds-y"])
    centre = disc.centroid
    assert abs(centre.x - (cx - bx)) < 4 and abs(centre.y - (cy - by)) < 4  # QuPath px = level 0 - bounds
    assert disc.area == pytest.approx(np.pi * r**2, rel=0.05)


class _NoProgress:
    def start_slide(self, index: int, count: int, name: str) -> None: ...
    def update(self, done_tiles: int, total_tiles: int) -> None: ...
    def end_slide(self, status: str) -> None: ...
