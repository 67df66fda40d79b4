"""DICOM WSI input: series made from the real CMU-1-Small-Region.svs with wsidicomizer (read through tiffslide)
are read through `open_slide` with the pixel size from the DICOM metadata, their pixels checked against
wsidicom's own decoder, and segmented by the demonstration model to the same mask as the SVS."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

import slidefuse
from slidefuse.runtime.segment import collect_slides
from slidefuse.runtime.slide import open_slide
from tests.conftest import need_slide

wsidicomizer = pytest.importorskip("wsidicomizer")
pytest.importorskip("tiffslide")
codec = pytest.importorskip("wsidicom.codec")

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "slidefuse" / "data" / "default"


def _dicomize(svs: Path, out: Path, encoding: object) -> Path:
    from wsidicomizer.sources import TiffSlideSource

    out.mkdir(parents=True)
    wsidicomizer.WsiDicomizer.convert(svs, out, preferred_source=TiffSlideSource, encoding=encoding,
                                      include_label=False, include_overview=False, include_thumbnail=False,
                                      workers=1)
    return out


@pytest.fixture(scope="module")
def lossless_dicom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cmu = need_slide("CMU-1-Small-Region.svs")
    return _dicomize(cmu, tmp_path_factory.mktemp("dicom") / "cmu-jpegls", codec.JpegLsSettings(level=0))


def test_dicom_reads_pixel_size_and_pixels(lossless_dicom: Path, cmu_slide: Path) -> None:
    with open_slide(lossless_dicom) as dcm, open_slide(cmu_slide) as svs:
        assert dcm.info.loader == "wsidicom" and dcm.info.mpp_source == "dicom"
        assert dcm.info.mpp == pytest.approx(0.499) and (dcm.info.width, dcm.info.height) == (2220, 2967)
        np.testing.assert_array_equal(dcm.level_rgb(0).numpy(), svs.level_rgb(0).numpy())  # lossless series
    one_file = next(lossless_dicom.glob("*.dcm"))
    with open_slide(one_file) as dcm:  # a .dcm file opens its series
        assert dcm.info.width == 2220


def test_dicom_jpeg_frames_are_decoded_lazily_by_libvips_like_wsidicom(cmu_slide: Path, tmp_path: Path) -> None:
    from wsidicom import WsiDicom

    folder = _dicomize(cmu_slide, tmp_path / "cmu-jpeg", codec.JpegSettings(quality=90))
    with open_slide(folder) as dcm, WsiDicom.open(folder) as wsi:
        ours = dcm.level_rgb(0).numpy().astype(np.int16)
        theirs = np.asarray(wsi.read_region((0, 0), 0, (2220, 2967)).convert("RGB")).astype(np.int16)
    diff = np.abs(ours - theirs)
    assert diff.mean() <= 1.5 and np.percentile(diff, 99) <= 8  # two JPEG decoders (libjpeg-turbo / pillow)


def test_dicom_segments_to_the_svs_mask(lossless_dicom: Path, cmu_slide: Path, tmp_path: Path) -> None:
    with slidefuse.load_model(DEMO, backend="ort-cpu", workers=2, backend_options={"threads": 1}) as model:
        from_dicom = model.segment(lossless_dicom, out=tmp_path / "dcm")
        from_svs = model.segment(cmu_slide, out=tmp_path / "svs")
    assert from_dicom.report["slide"]["mpp_source"] == "dicom"
    a, b = from_dicom.mask_array(), from_svs.mask_array()
    assert a.shape == b.shape
    tissue = (a > 0) | (b > 0)
    agreement = float((a[tissue] == b[tissue]).mean())
    assert tissue.mean() > 0.05 and agreement >= 0.999, agreement


def test_a_dicom_folder_in_a_scan_is_one_slide(lossless_dicom: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert collect_slides([lossless_dicom.parent]) == [lossless_dicom]
        assert collect_slides([lossless_dicom]) == [lossless_dicom]
    assert not [r for r in caplog.records if "not recognised" in r.getMessage()]
