"""`SegmentationResult.probabilities()`: probs.ome.tif as a lazy C-band pyvips image, equal to what tifffile
reads from the file, and a clear error when the probabilities were not written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pyvips

import slidefuse
from slidefuse.api import ResultError

FAST = {"workers": 2, "backend_options": {"threads": 1}}


def test_probabilities_are_a_lazy_c_band_image_of_probs_ome_tif(bundle_dir: Path, tmp_path: Path) -> None:
    from api.test_api import _blobs, _tiff

    tifffile = pytest.importorskip("tifffile")
    synthetic_tiff = _tiff(tmp_path / "slide.tif", _blobs(480, 320))
    with slidefuse.load_model(bundle_dir, backend="ort-cpu", **FAST) as model:
        result = model.segment(synthetic_tiff, out=tmp_path / "out", formats="tiff,probs")
        plain = model.segment(synthetic_tiff, out=tmp_path / "plain", formats="tiff")
    image = result.probabilities()
    classes = result.report["model"]["classes"]
    assert isinstance(image, pyvips.Image)
    assert (image.bands, image.format) == (len(classes), "uchar")
    with tifffile.TiffFile(result.out_dir / "probs.ome.tif") as tif:  # type: ignore[operator]
        planes = tif.series[0].asarray()  # [C, H, W]
    assert (image.height, image.width) == planes.shape[1:]
    np.testing.assert_array_equal(np.moveaxis(image.numpy(), -1, 0), planes)
    mask = result.mask().numpy()
    assert (np.argmax(planes, axis=0) == mask)[planes.max(axis=0) > 0].mean() > 0.99
    with pytest.raises(ResultError, match="probs.ome.tif was not written"):
        plain.probabilities()
