"""The Python API's errors name the fields and values a caller passed (`stitch_threads`, `mpp=`, `max_tiles=`),
never the command line's flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pyvips

import slidefuse
from slidefuse.errors import InvalidPixelSize, UsageError

FAST = {"workers": 2, "backend_options": {"threads": 1}}


def _tiff(path: Path, mpp: float | None = 0.5) -> Path:
    img = np.full((320, 480, 3), 242, dtype=np.uint8)
    img[100:220, 100:300] = (220, 130, 180)
    res = {"xres": 1000 / mpp, "yres": 1000 / mpp, "resunit": "cm"} if mpp is not None else {}
    pyvips.Image.new_from_array(img, interpretation="srgb").tiffsave(
        str(path), tile=True, tile_width=128, tile_height=128, pyramid=True, compression="deflate", **res)
    return path


def test_an_option_out_of_range_names_its_field(bundle_dir: Path) -> None:
    with pytest.raises(UsageError) as err:
        slidefuse.load_model(bundle_dir, backend="ort-cpu", stitch_threads=0)
    assert err.value.field == "stitch_threads" and str(err.value).startswith("stitch_threads must be")
    with pytest.raises(InvalidPixelSize) as px:
        slidefuse.load_model(bundle_dir, backend="ort-cpu", mpp=50.0)
    msg = str(px.value)
    assert px.value.field == "mpp" and "mpp=<um/px>" in msg and "force_mpp=True" in msg and "--" not in msg


def test_a_slide_error_names_the_field_and_value(bundle_dir: Path, tmp_path: Path) -> None:
    slide = _tiff(tmp_path / "s.tif")
    no_mpp = _tiff(tmp_path / "no_mpp.tif", mpp=None)
    results = list(slidefuse.segment_many([slide, no_mpp], bundle_dir, out=tmp_path / "out", backend="ort-cpu",
                                          max_tiles=1, **FAST))
    assert [r.status for r in results] == ["failed", "failed"]
    too_many, missing = str(results[0].error), str(results[1].error)
    assert "exceed max_tiles=1;" in too_many and "pass a larger max_tiles=<tiles>" in too_many
    assert "pass mpp=MICRONS_PER_PIXEL" in missing
    assert "--" not in too_many + missing
