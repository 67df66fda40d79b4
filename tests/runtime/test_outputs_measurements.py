"""mask.geojson's QuPath measurements: area (µm²), perimeter (µm) and the mean probability of the feature's class,
read back the way QuPath's GeoJSON import reads them."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slidefuse.runtime.outputs import OutputOptions, parse_formats, write_outputs
from slidefuse.runtime.outputs.geojson import AREA, MEAN_PROBABILITY, PERIMETER

from .test_outputs_common import make_bundle, make_result, make_slide


def qupath_measurements(properties: dict[str, Any]) -> dict[str, float] | None:
    """The measurement list QuPath builds from a feature's properties, ported line by line from QuPath's
    `qupath-core/src/main/java/qupath/lib/io/QuPathTypeAdapters.java` (commit e7662d89, August 2026):
    `PathObjectTypeAdapter.parseObject` reads "measurements" only when it is a JSON array or object, then
    `MeasurementListTypeAdapter.read`: an array holds {"name", "value"} objects (before QuPath 0.4); an object maps
    a name to a number (kept as a double), or to a string "nan" / "inf" / "-inf" or a parseable number; any other
    value is dropped with a warning ("Cannot parse measurement value"). Dropped values raise here."""
    if "measurements" not in properties:
        return None
    value = properties["measurements"]
    if isinstance(value, list):
        return {str(obj["name"]): float(obj["value"]) for obj in value}
    if not isinstance(value, dict):
        return None  # neither array nor object: QuPath ignores it
    out: dict[str, float] = {}
    for key, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise AssertionError(f"QuPath would drop measurement {key!r}: {v!r} is not a number")
        if isinstance(v, str):
            lower = v.lower()
            out[key] = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}.get(lower, None) or float(v)
        else:
            out[key] = float(v)
    return out


def report_areas(out: Path) -> dict[str, float]:
    report = json.loads((out / "report.json").read_text())
    return {name: float(a["area_mm2"]) for name, a in report["areas"].items()}


def _features(path: Path) -> list[dict[str, Any]]:
    return list(json.loads(path.read_text(encoding="utf-8"))["features"])


def test_measurements_are_qupath_readable_with_area_perimeter_and_mean_probability(tmp_path: Path) -> None:
    h, w, mpp_mask, l0_mpp = 120, 160, 2.0, 0.5  # l0 px per mask px: 4
    mask = np.zeros((h, w), np.uint8)
    mask[10:50, 20:80] = 1  # 40 x 60 mask px of class 1
    mask[70:110, 100:130] = 2  # 40 x 30 mask px of class 2
    probs = np.zeros((h, w, 3), np.uint8)
    probs[..., 0] = 255
    probs[10:50, 20:80] = (51, 204, 0)  # class 1 at 0.8
    probs[10:30, 20:80, 1] = 153  # ... except its top half at 0.6: mean 0.7
    probs[70:110, 100:130] = (0, 100, 155)  # class 2 at 155 / 255
    probs.tofile(tmp_path / "p.raw")
    result = dataclasses.replace(make_result(mask, tmp_path / "m.raw", mpp=mpp_mask), probs_path=tmp_path / "p.raw")
    slide = make_slide(w * 4, h * 4, l0_mpp)
    out = tmp_path / "out"
    paths = write_outputs(result, slide, make_bundle(tmp_path), out, OutputOptions(formats=parse_formats("geojson")))
    features = _features(paths["geojson"])
    assert len(features) == 2
    by_class = {f["properties"]["classification"]["name"]: qupath_measurements(f["properties"]) for f in features}
    tumour, stroma = by_class["tumour"], by_class["stroma"]
    assert tumour is not None and stroma is not None
    assert set(tumour) == {AREA, PERIMETER, MEAN_PROBABILITY}
    # 40 x 60 mask px at 2 um/px; its outline, simplified within half a pixel, about 2 * (40 + 60) px long
    assert tumour[AREA] == pytest.approx(40 * 60 * 4.0)
    assert tumour[PERIMETER] == pytest.approx(2 * (40 + 60) * 2.0, rel=0.01)
    assert tumour[MEAN_PROBABILITY] == pytest.approx((204 + 153) / 2 / 255, abs=1e-4)
    assert stroma[AREA] == pytest.approx(40 * 30 * 4.0)
    areas = report_areas(out)
    assert tumour[AREA] / 1e6 == pytest.approx(areas["tumour"]) and stroma[AREA] / 1e6 == pytest.approx(areas["stroma"])
    assert stroma[MEAN_PROBABILITY] == pytest.approx(155 / 255, abs=1e-4)
    report = json.loads((out / "report.json").read_text())
    assert report["outputs"]["geojson"]["measurements"] == [AREA, PERIMETER, MEAN_PROBABILITY]


def test_without_probabilities_features_still_carry_area_and_perimeter(tmp_path: Path) -> None:
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 8:24] = 1
    result = make_result(mask, tmp_path / "m.raw", mpp=1.0)
    paths = write_outputs(result, make_slide(64, 64, 1.0), make_bundle(tmp_path), tmp_path / "out",
                          OutputOptions(formats=parse_formats("geojson")))
    (feature,) = _features(paths["geojson"])
    got = qupath_measurements(feature["properties"])
    assert got is not None and set(got) == {AREA, PERIMETER}
    assert got[AREA] == pytest.approx(32 * 16)


def test_the_qupath_port_drops_nothing_it_should_keep() -> None:
    """The port follows QuPath's rules, so it can fail: a non-number is what QuPath would drop."""
    assert qupath_measurements({"measurements": {"a": 1, "b": "NaN", "c": "2.5"}}) == {
        "a": 1.0, "b": pytest.approx(math.nan, nan_ok=True), "c": 2.5}
    assert qupath_measurements({"measurements": [{"name": "a", "value": 3}]}) == {"a": 3.0}
    assert qupath_measurements({"measurements": "x"}) is None
    with pytest.raises(AssertionError, match="drop"):
        qupath_measurements({"measurements": {"a": None}})
