"""Slide reader: the three real slides, synthetic pyramidal TIFFs, pixel-size lookup, scaled views, padding,
thread-safety, the in-memory slide, broken files, and the coordinate-frame helpers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import pyvips

from slidefuse.errors import InvalidPixelSize, MissingPixelSize, SlidefuseError, SlideNotFound, SlideReadError
from slidefuse.runtime import coords
from slidefuse.runtime.slide import InMemorySlide, open_slide

# The synthetic slide of tests/runtime/conftest.py (fixtures synthetic_tiff, synthetic_array, in_memory_slide).
SYNTH_W, SYNTH_H, SYNTH_MPP = 2048, 1536, 0.5


def _vips_rgb(image: pyvips.Image, x: int, y: int, w: int, h: int) -> np.ndarray:
    """Reference pixels: a direct pyvips crop of the first three bands."""
    return np.asarray(image.crop(x, y, w, h).extract_band(0, n=3).numpy(), dtype=np.uint8)


# ------------------------------------------------------------------------------------------ real slides


def test_cmu_info(cmu_slide: Path) -> None:
    with open_slide(cmu_slide) as s:
        i = s.info
    assert (i.width, i.height) == (2220, 2967)
    assert i.mpp == pytest.approx(0.499)
    assert (i.mpp_source, i.vendor, i.loader) == ("openslide", "aperio", "openslideload")
    assert i.objective_power == 20
    assert len(i.levels) == 1 and i.levels[0].downsample == 1.0
    assert i.properties["openslide.vendor"] == "aperio"


def test_tcga_needs_mpp(tcga_slide: Path) -> None:
    with pytest.raises(MissingPixelSize) as exc:
        open_slide(tcga_slide)
    msg = str(exc.value)
    assert "\n" not in msg and tcga_slide.name in msg and "mpp=MICRONS_PER_PIXEL" in msg and "--" not in msg


def test_tcga_with_mpp(tcga_slide: Path) -> None:
    with open_slide(tcga_slide, mpp=0.5) as s:
        i = s.info
        assert (i.width, i.height, i.mpp, i.mpp_source) == (4443, 3567, 0.5, "user")
        assert [(lv.width, lv.height) for lv in i.levels] == [(4443, 3567), (2221, 1783)]
        assert i.levels[1].downsample == pytest.approx(2.0, rel=1e-3)
        view = s.scaled(1.0)
        assert view.level == 1  # the 1.0 um/px level, not a resample of level 0
        assert (view.width, view.height) == (2222, 1784)  # round(4443 / 2), round(3567 / 2)


def test_ome_tiff(ome_slide: Path) -> None:
    with open_slide(ome_slide) as s:
        i = s.info
    assert (i.width, i.height) == (1445, 1445)
    assert i.mpp == pytest.approx(0.346, abs=0.005)
    assert i.mpp_source in ("tiff", "ome")
    assert (i.loader, i.vendor) == ("tiffload", "ome-tiff")


def test_ome_xml_used_when_tags_absent(ome_slide: Path, tmp_path: Path) -> None:
    """Strip the resolution tags (1 px/mm placeholder) but keep the OME-XML: the pixel size comes from it."""
    src = pyvips.Image.tiffload(str(ome_slide))
    desc = src.get("image-description")
    out = tmp_path / "ome_no_tags.ome.tif"
    src.copy(xres=1.0, yres=1.0).tiffsave(str(out), tile=True, compression="jpeg", Q=90)
    assert pyvips.Image.tiffload(str(out)).get("image-description") == desc
    with open_slide(out) as s:
        assert s.info.mpp_source == "ome"
        assert s.info.mpp == pytest.approx(0.34605, rel=1e-4)


def test_cmu_read_equals_openslide_crop(cmu_slide: Path) -> None:
    with open_slide(cmu_slide) as s:
        view = s.scaled(0.499)
        assert view.level == 0 and (view.width, view.height) == (2220, 2967)
        ref = _vips_rgb(pyvips.Image.openslideload(str(cmu_slide)), 300, 1000, 512, 384)
        np.testing.assert_array_equal(view.read(300, 1000, 512, 384), ref)


@pytest.mark.parametrize("mpp", [0.25, 0.5, 0.8, 1.0, 2.0, 7.3])
def test_scaled_sizes_real(cmu_slide: Path, tcga_slide: Path, ome_slide: Path, mpp: float) -> None:
    for path, override in ((cmu_slide, None), (tcga_slide, 0.5), (ome_slide, None)):
        with open_slide(path, mpp=override) as s:
            view = s.scaled(mpp)
            assert abs(view.width * mpp - s.info.width * s.info.mpp) <= mpp / 2 + 1e-9
            assert abs(view.height * mpp - s.info.height * s.info.mpp) <= mpp / 2 + 1e-9
            assert (view.width, view.height) == s.model_size(mpp)
            tile = view.read(view.width - 100, view.height - 100, 128, 128)
            assert tile.shape == (128, 128, 3) and tile.dtype == np.uint8
            assert (tile[100:, :] == 255).all() and (tile[:, 100:] == 255).all()


def test_mpp_override(cmu_slide: Path) -> None:
    with open_slide(cmu_slide, mpp=0.25) as s:
        assert (s.info.mpp, s.info.mpp_source) == (0.25, "user")
        assert s.scaled(0.5).width == 1110


def test_thumbnail(cmu_slide: Path) -> None:
    with open_slide(cmu_slide) as s:
        th = s.thumbnail(512)
        assert th.dtype == np.uint8 and th.shape == (512, 383, 3)
        assert s.thumbnail_mpp(512) == pytest.approx(0.499 * 2967 / 512)
        assert th.mean() > 100  # a real image, not black


# ------------------------------------------------------------------------------------ synthetic TIFFs


def test_synthetic_info(synthetic_tiff: Path) -> None:
    with open_slide(synthetic_tiff) as s:
        i = s.info
    assert (i.width, i.height, i.mpp, i.mpp_source) == (SYNTH_W, SYNTH_H, SYNTH_MPP, "tiff")
    assert (i.loader, i.vendor) == ("tiffload", "tiff")
    assert [lv.downsample for lv in i.levels] == [1.0, 2.0, 4.0, 8.0]


def test_synthetic_no_mpp(synthetic_tiff_no_mpp: Path) -> None:
    with pytest.raises(MissingPixelSize, match="pass mpp="):
        open_slide(synthetic_tiff_no_mpp)
    with open_slide(synthetic_tiff_no_mpp, mpp=0.5) as s:
        assert (s.info.mpp, s.info.mpp_source) == (0.5, "user")


@pytest.mark.parametrize(
    ("res", "unit", "expected"),
    [
        (72 / 25.4, "inch", None),  # the TIFF default 72 dpi
        (300 / 25.4, "inch", None),  # a print placeholder
        (1.0, "cm", None),  # libvips' 1 px/mm default
        (1000 / 25.4, "inch", None),  # 1000 dpi = 25.4 um/px: over the plausible 20 um/px of a slide's level 0
        (50.0, "cm", 20.0),  # 50 px/mm: the coarsest plausible pixel size (PLAUSIBLE_MPP, inclusive)
        (20000 / 25.4, "inch", 1.27),  # a real pixel size written in dpi (20000 dpi)
        (50800 / 25.4, "inch", 0.5),
        (4000.0, "cm", 0.25),
    ],
)
def test_resolution_tags(tmp_path: Path, res: float, unit: str, expected: float | None) -> None:
    image = pyvips.Image.new_from_array(np.full((64, 96, 3), 200, np.uint8), interpretation="srgb")
    p = tmp_path / "res.tif"
    image.tiffsave(str(p), tile=True, compression="jpeg", xres=res, yres=res, resunit=unit)
    if expected is None:
        with pytest.raises(MissingPixelSize):
            open_slide(p)
    else:
        with open_slide(p) as s:
            assert s.info.mpp == pytest.approx(expected, rel=1e-4)


def test_read_native_matches_tiffload(synthetic_tiff: Path) -> None:
    with open_slide(synthetic_tiff) as s:
        view = s.scaled(SYNTH_MPP)
        ref = _vips_rgb(pyvips.Image.tiffload(str(synthetic_tiff)), 1000, 700, 300, 200)
        np.testing.assert_array_equal(view.read(1000, 700, 300, 200), ref)


@pytest.mark.parametrize(("mpp", "level"), [(1.0, 1), (1.5, 1), (2.0, 2), (4.0, 3), (64.0, 3), (0.3, 0)])
def test_level_choice(synthetic_tiff: Path, mpp: float, level: int) -> None:
    with open_slide(synthetic_tiff) as s:
        assert s.scaled(mpp).level == level


def test_read_at_level_mpp_is_that_level(synthetic_tiff: Path) -> None:
    """At exactly a level's pixel size the view is that level's pixels, not a resample of level 0."""
    with open_slide(synthetic_tiff) as s:
        view = s.scaled(1.0)
        ref = _vips_rgb(pyvips.Image.tiffload(str(synthetic_tiff), page=1), 200, 100, 256, 256)
        np.testing.assert_array_equal(view.read(200, 100, 256, 256), ref)


def test_resampled_read_is_close_to_truth(synthetic_tiff: Path, synthetic_array: np.ndarray) -> None:
    """At 0.75 um/px (from level 0) the mean colour of a blob region matches the source within JPEG noise."""
    with open_slide(synthetic_tiff) as s:
        view = s.scaled(0.75)
        got = view.read(0, 0, view.width, view.height).astype(np.float32)
    truth = synthetic_array[::3, ::3].astype(np.float32)  # 0.5 -> 1.5 um/px
    small = got[::2, ::2][: truth.shape[0], : truth.shape[1]]
    assert np.abs(small.mean(axis=(0, 1)) - truth.mean(axis=(0, 1))).max() < 3.0


def test_read_padding(synthetic_tiff: Path) -> None:
    with open_slide(synthetic_tiff) as s:
        view = s.scaled(1.0)  # 1024 x 768
        inside = view.read(0, 0, 40, 40)
        tl = view.read(-10, -20, 50, 60)
        assert (tl[:20] == 255).all() and (tl[:, :10] == 255).all()
        np.testing.assert_array_equal(tl[20:, 10:], inside)
        br = view.read(1000, 750, 64, 64)
        np.testing.assert_array_equal(br[:18, :24], view.read(1000, 750, 24, 18))
        assert (br[18:] == 255).all() and (br[:, 24:] == 255).all()
        assert (view.read(5000, 5000, 16, 16) == 255).all()
        assert (view.read(-100, 10, 50, 50) == 255).all()
        with pytest.raises(ValueError):
            view.read(0, 0, 0, 10)


def test_parallel_reads_equal_serial(synthetic_tiff: Path) -> None:
    rng = np.random.default_rng(0)
    with open_slide(synthetic_tiff) as s:
        view = s.scaled(0.7)
        boxes = [(int(x), int(y), 192, 160) for x, y in rng.integers(-100, 2000, (48, 2))]
        serial = [view.read(*b) for b in boxes]
        with ThreadPoolExecutor(8) as pool:
            parallel = list(pool.map(lambda b: view.read(*b), boxes))
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


def test_read_many(synthetic_tiff: Path) -> None:
    with open_slide(synthetic_tiff) as s:
        view = s.scaled(0.5)
        row = [(x, 300, 256, 256) for x in range(-64, 2100, 192)]  # a band of overlapping tiles
        scattered = [(0, 0, 64, 64), (1900, 1400, 200, 200)]
        for boxes in (row, scattered):
            for got, box in zip(view.read_many(boxes), boxes, strict=True):
                np.testing.assert_array_equal(got, view.read(*box))
        assert view.read_many([]) == []


def test_scaled_views_are_cached(synthetic_tiff: Path) -> None:
    with open_slide(synthetic_tiff) as s:
        assert s.scaled(1.0) is s.scaled(1.0)
        with pytest.raises(ValueError):
            s.scaled(0.0)


def test_rgba_and_grey_tiffs(tmp_path: Path) -> None:
    """Alpha is flattened onto white, grey is replicated to RGB."""
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[:32, :, :3] = 100
    rgba[:32, :, 3] = 255  # bottom half transparent
    p = tmp_path / "rgba.tif"
    pyvips.Image.new_from_array(rgba, interpretation="srgb").tiffsave(str(p), tile=True, xres=2000, yres=2000)
    with open_slide(p) as s:
        px = s.scaled(0.5).read(0, 0, 64, 64)
    assert (px[:32] == 100).all() and (px[32:] == 255).all()
    grey = np.tile(np.arange(64, dtype=np.uint8), (64, 1))
    g = tmp_path / "grey.tif"
    pyvips.Image.new_from_array(grey).tiffsave(str(g), tile=True, xres=2000, yres=2000)
    with open_slide(g) as s:
        px = s.scaled(0.5).read(0, 0, 64, 64)
    assert px.shape == (64, 64, 3) and (px[..., 0] == grey).all() and (px[..., 2] == grey).all()


def test_subifd_pyramid(tmp_path: Path, synthetic_array: np.ndarray) -> None:
    """OME-TIFF style pyramids keep their levels in sub-IFDs."""
    p = tmp_path / "sub.tif"
    image = pyvips.Image.new_from_array(np.ascontiguousarray(synthetic_array[:384, :512]), interpretation="srgb")
    image.tiffsave(str(p), tile=True, pyramid=True, subifd=True, compression="jpeg", xres=2000, yres=2000)
    with open_slide(p) as s:
        assert [lv.width for lv in s.info.levels] == [512, 256, 128]
        assert s.scaled(1.0).level == 1


# ------------------------------------------------------------------------------------------- in memory


def test_in_memory_slide(in_memory_slide: InMemorySlide, synthetic_array: np.ndarray) -> None:
    s = in_memory_slide
    assert (s.info.width, s.info.height, s.info.mpp, s.info.loader) == (SYNTH_W, SYNTH_H, SYNTH_MPP, "memory")
    view = s.scaled(SYNTH_MPP)
    np.testing.assert_array_equal(view.read(100, 200, 300, 50), synthetic_array[200:250, 100:400])
    padded = view.read(SYNTH_W - 10, -5, 20, 20)
    np.testing.assert_array_equal(padded[5:, :10], synthetic_array[:15, -10:])
    assert (padded[:5] == 255).all() and (padded[:, 10:] == 255).all()
    half = s.scaled(2 * SYNTH_MPP)
    assert (half.width, half.height) == (SYNTH_W // 2, SYNTH_H // 2)
    th = s.thumbnail(256)
    assert th.shape == (192, 256, 3)


def test_in_memory_slide_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        InMemorySlide(np.zeros((4, 4), np.uint8), 0.5)
    with pytest.raises(ValueError, match="uint8"):
        InMemorySlide(np.zeros((4, 4, 3), np.float32), 0.5)
    with pytest.raises(ValueError, match="mpp"):
        InMemorySlide(np.zeros((4, 4, 3), np.uint8), -1.0)


# ------------------------------------------------------------------------------------------ bad input


def test_missing_path(tmp_path: Path) -> None:
    p = tmp_path / "nope.svs"
    with pytest.raises(SlideNotFound) as exc:
        open_slide(p)
    assert isinstance(exc.value, FileNotFoundError) and str(p) in str(exc.value)


def test_corrupt_slides(corrupt_slide: Path) -> None:
    with pytest.raises(SlideReadError) as exc:
        open_slide(corrupt_slide)
    msg = str(exc.value)
    assert isinstance(exc.value, OSError) and "\n" not in msg and str(corrupt_slide) in msg


def test_folder_is_not_a_slide(tmp_path: Path) -> None:
    with pytest.raises(SlideReadError, match="folder"):
        open_slide(tmp_path)


def test_garbled_pixels_fail_on_read(garbled_tiff: Path) -> None:
    """Broken tile data is an error (SlideReadError, one line), never silently wrong pixels."""
    with pytest.raises(SlidefuseError) as exc:
        with open_slide(garbled_tiff) as s:
            view = s.scaled(SYNTH_MPP)
            for y in range(0, SYNTH_H, 256):
                view.read(0, y, SYNTH_W, 256)
    assert isinstance(exc.value, SlideReadError) and "\n" not in str(exc.value)


def test_bad_mpp_argument(synthetic_tiff: Path) -> None:
    with pytest.raises(InvalidPixelSize, match="positive"):
        open_slide(synthetic_tiff, mpp=0.0)


# ---------------------------------------------------------------------------------------------- coords


def test_coords_round_trip() -> None:
    assert coords.model_size(4443, 3567, 0.25, 0.5) == (2222, 1784)
    assert coords.l0_to_model_xy(100, 50, 0.25, 0.5) == (50, 25)
    assert coords.model_to_l0_xy(50, 25, 0.5, 0.25) == (100, 50)
    assert coords.thumb_to_model_xy(*coords.model_to_thumb_xy(123, 456, 0.5, 8.0), 8.0, 0.5) == pytest.approx(
        (123, 456)
    )
    assert coords.map_box((0, 0, 512, 512), 0.5, 8.0) == (0, 0, 32, 32)
    assert coords.map_box((10, 10, 512, 512), 0.5, 8.0) == (0, 0, 33, 33)  # covers the box
    assert coords.model_box_to_thumb((-100, 0, 512, 512), 0.5, 8.0, (20, 30)) == (0, 0, 26, 20)
    assert coords.model_box_to_thumb((10_000, 0, 16, 16), 0.5, 8.0, (20, 30))[2] == 0
    assert coords.model_box_to_l0((10, 20, 30, 40), 1.0, 0.5) == (20, 40, 60, 80)
    assert coords.l0_box_to_model((20, 40, 60, 80), 0.5, 1.0) == (10, 20, 30, 40)
    assert coords.level_for_mpp([1.0, 4.0, 16.0], 0.25, 0.5) == 0
    assert coords.level_for_mpp([1.0, 4.0, 16.0], 0.25, 1.0) == 1
    assert coords.level_for_mpp([1.0, 4.0, 16.0], 0.25, 0.9995) == 1  # within rtol counts as equal
    assert coords.level_for_mpp([1.0, 4.0, 16.0], 0.25, 0.1) == 0
    assert coords.thumb_mpp_for(1000, 500, 0.5, 2000) == 0.5  # never finer than level 0
    with pytest.raises(ValueError):
        coords.scale(0.0, 1.0)


def test_make_tiff_fixture(make_tiff, synthetic_array: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    p = make_tiff(synthetic_array[:200, :300], mpp=0.25, name="h.tif")
    with open_slide(p) as s:
        assert (s.info.width, s.info.height, s.info.mpp) == (300, 200, 0.25)


def test_one_plausible_pixel_size_range_for_files_users_and_models() -> None:
    """Slide readers (file values), --mpp / --force-mpp and the manifest schema share coords.PLAUSIBLE_MPP."""
    from slidefuse.runtime.manifest_schema import json_schema
    from slidefuse.runtime.segment.options import SegmentOptions, check_plausible_mpp
    from slidefuse.runtime.slide import metadata

    lo, hi = coords.PLAUSIBLE_MPP
    assert (lo, hi) == (0.05, 20.0) and metadata.PLAUSIBLE_MPP is coords.PLAUSIBLE_MPP
    schema = json_schema()["properties"]["mpp"]
    assert (schema["minimum"], schema["maximum"]) == (lo, hi)
    check_plausible_mpp(hi, None, force=False)
    with pytest.raises(InvalidPixelSize, match="outside the plausible 0.05..20 um/px"):
        SegmentOptions(mpp=25.0)
    assert SegmentOptions(mpp=25.0, force_mpp=True).mpp == 25.0
