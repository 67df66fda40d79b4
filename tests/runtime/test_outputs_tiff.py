"""mask.tif: exact class indices at every pyramid level, tiled + deflate (never JPEG), pixel size that
OpenSlide and libvips read back, geometry aligned with the slide, and --mask-mpp mode downsampling."""

from __future__ import annotations

import numpy as np
import pytest

from slidefuse.errors import UsageError
from slidefuse.runtime.outputs.mask_tiff import write_mask_tiff

from .test_outputs_common import blobby_mask, make_result, make_slide


def _tiff_tags(path) -> dict[int, object]:
    from PIL import Image

    with Image.open(path) as im:
        return dict(im.tag_v2)


def test_mask_tiff_is_exact_tiled_deflate_pyramid(tmp_path) -> None:
    import pyvips

    mask = blobby_mask(1100, 1500, seed=3)
    result = make_result(mask, tmp_path / "m.raw", mpp=1.0)
    slide = make_slide(3000, 2200, 0.5)
    info = write_mask_tiff(result, slide, tmp_path / "mask.tif", num_classes=3)
    img = pyvips.Image.new_from_file(str(tmp_path / "mask.tif"))
    assert (img.bands, img.format) == (1, "uchar")
    np.testing.assert_array_equal(img.numpy(), mask)
    n_pages = img.get("n-pages")
    assert n_pages == info["levels"] >= 3
    for page in range(1, n_pages):
        level = pyvips.Image.new_from_file(str(tmp_path / "mask.tif"), page=page).numpy()
        assert set(np.unique(level)) <= {0, 1, 2}  # mode shrink: class indices, never averages
    tags = _tiff_tags(tmp_path / "mask.tif")
    assert tags[322] == 256 and tags[323] == 256  # TileWidth, TileLength
    assert tags[259] in (8, 32946)  # Compression: deflate (not 7 = JPEG)
    assert tags[296] == 3  # ResolutionUnit: centimetre
    assert float(tags[282]) == pytest.approx(1e4 / 1.0)  # XResolution: px/cm at 1 um/px


def test_pyramid_levels_keep_blocky_classes_exact(tmp_path) -> None:
    import pyvips

    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 3, (64, 80)).astype(np.uint8)
    mask = np.kron(coarse, np.ones((16, 16), np.uint8))  # 1024 x 1280, constant 16x16 blocks
    result = make_result(mask, tmp_path / "m.raw", mpp=0.5)
    write_mask_tiff(result, make_slide(1280, 1024, 0.5), tmp_path / "mask.tif", num_classes=3)
    for page, f in ((1, 2), (2, 4)):
        level = pyvips.Image.new_from_file(str(tmp_path / "mask.tif"), page=page).numpy()
        np.testing.assert_array_equal(level, mask[::f, ::f])


def test_openslide_reads_the_pixel_size_and_pixels(tmp_path) -> None:
    openslide = pytest.importorskip("openslide")
    mask = blobby_mask(900, 1200, seed=4)
    mpp = 0.92
    result = make_result(mask, tmp_path / "m.raw", mpp=mpp)
    slide = make_slide(round(1200 * mpp / 0.25), round(900 * mpp / 0.25), 0.25)
    write_mask_tiff(result, slide, tmp_path / "mask.tif", num_classes=3)
    osr = openslide.OpenSlide(str(tmp_path / "mask.tif"))
    assert osr.properties["openslide.vendor"] == "generic-tiff"
    assert osr.level_count >= 3  # OpenSlide sees the pyramid
    props = osr.properties
    if "openslide.mpp-x" in props:  # OpenSlide >= 4 derives it from the tags
        got_x, got_y = float(props["openslide.mpp-x"]), float(props["openslide.mpp-y"])
    else:  # OpenSlide 3.4: the raw tags, in px per centimetre
        assert props["tiff.ResolutionUnit"] == "centimeter"
        got_x, got_y = 1e4 / float(props["tiff.XResolution"]), 1e4 / float(props["tiff.YResolution"])
    assert got_x == pytest.approx(mpp, rel=1e-4) and got_y == pytest.approx(mpp, rel=1e-4)
    region = np.asarray(osr.read_region((100, 200), 0, (300, 250)))
    np.testing.assert_array_equal(region[..., 0], mask[200:450, 100:400])  # grey = class index
    # Geometry: the TIFF covers the slide's physical extent within one mask pixel.
    w, h = osr.dimensions
    assert abs(w * got_x - slide.width * slide.mpp) <= got_x
    assert abs(h * got_y - slide.height * slide.mpp) <= got_y


def test_mask_mpp_writes_a_coarser_mode_downsampled_tiff(tmp_path) -> None:
    import pyvips

    rng = np.random.default_rng(1)
    coarse = rng.integers(0, 3, (50, 70)).astype(np.uint8)
    mask = np.kron(coarse, np.ones((4, 4), np.uint8))
    # Salt each 4x4 block with a minority pixel of another class: mode must ignore it, nearest might not.
    mask[::4, ::4] = (mask[::4, ::4] + 1) % 3
    result = make_result(mask, tmp_path / "m.raw", mpp=0.5)
    slide = make_slide(280, 200, 0.5)
    info = write_mask_tiff(result, slide, tmp_path / "mask.tif", num_classes=3, mask_mpp=2.0)
    assert (info["width"], info["height"]) == (70, 50)
    assert info["mpp_x"] == pytest.approx(2.0) and info["downsampling"] == "mode of 4x4 blocks"
    img = pyvips.Image.new_from_file(str(tmp_path / "mask.tif"))
    np.testing.assert_array_equal(img.numpy(), coarse)
    assert img.xres == pytest.approx(1000 / 2.0)  # libvips reports px/mm


def test_mask_mpp_finer_than_the_model_is_refused(tmp_path) -> None:
    result = make_result(np.zeros((10, 10), np.uint8), tmp_path / "m.raw", mpp=1.0)
    with pytest.raises(UsageError, match="mask_mpp=0.5 is finer") as err:
        write_mask_tiff(result, make_slide(20, 20, 0.5), tmp_path / "mask.tif", num_classes=3, mask_mpp=0.5)
    assert err.value.field == "mask_mpp"
    assert not (tmp_path / "mask.tif").exists()


def test_truncated_raw_mask_is_an_error(tmp_path) -> None:
    from slidefuse.runtime.outputs import OutputError

    result = make_result(np.zeros((10, 10), np.uint8), tmp_path / "m.raw", mpp=1.0)
    with open(result.raw_path, "r+b") as f:
        f.truncate(50)
    with pytest.raises(OutputError, match="truncated"):
        write_mask_tiff(result, make_slide(10, 10, 1.0), tmp_path / "mask.tif", num_classes=3)
    assert not any(tmp_path.glob("mask.tif*"))


@pytest.mark.parametrize("k", [2, 3, 7])
def test_block_mode_matches_a_reference_including_partial_edge_blocks(tmp_path, k: int) -> None:
    from slidefuse.runtime.outputs.raster import block_mode

    rng = np.random.default_rng(k)
    mask = rng.integers(0, 3, (50, 61)).astype(np.uint8)
    result = make_result(mask, tmp_path / "m.raw", mpp=1.0)
    got = block_mode(result, k, num_classes=3)
    oh, ow = -(-50 // k), -(-61 // k)
    ref = np.zeros((oh, ow), np.uint8)
    for r in range(oh):
        for c in range(ow):
            counts = np.bincount(mask[r * k : (r + 1) * k, c * k : (c + 1) * k].ravel(), minlength=3)
            ref[r, c] = counts.argmax()  # ties: lowest class
    np.testing.assert_array_equal(got, ref)
    out = block_mode(result, k, tmp_path / "b.raw", num_classes=3)
    np.testing.assert_array_equal(np.fromfile(out, np.uint8).reshape(oh, ow), ref)
