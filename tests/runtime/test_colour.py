"""True colours: slidefuse's pixels against independent decoders (tifffile + imagecodecs, openslide-python)
on the real slides and on a fixture of every colour layout, at level 0 and at a reduced level."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tifffile")
pytest.importorskip("imagecodecs")
import tifffile

from slidefuse.runtime.slide import colour as colour_mod
from slidefuse.runtime.slide import open_slide
from slidefuse.runtime.slide.crosscheck import check_colours
from tests.conftest import find_slide, need_slide
from tests.runtime import colour_fixtures as fx

REAL = ["CMU-1-Small-Region.svs", "TCGA-CR-7395-01A-01-TS1.svs", "OS-2-vsi.ome.tif"]


def _source() -> np.ndarray:
    """Real H&E pixels when the CMU slide is at hand (uint8 [768, 1024, 3]), else a stain-like gradient."""
    cmu = find_slide("CMU-1-Small-Region.svs")
    if cmu.is_file():
        import pyvips

        return pyvips.Image.openslideload(str(cmu)).numpy()[1000:1768, 600:1624, :3].copy()
    y, x = np.mgrid[0:768, 0:1024]
    return np.dstack([200 - x % 97, 120 + y % 80, 190 - (x + y) % 60]).astype(np.uint8)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("colour")
    src = _source()
    return {
        "ycbcr-tagged-rgb.tif": fx.ycbcr_tagged_rgb(src, d / "ycbcr-tagged-rgb.tif"),
        "ycbcr-tagged-rgb.svs": fx.ycbcr_tagged_rgb(src, d / "ycbcr-tagged-rgb.svs", aperio=True),
        "ycbcr-subsampled.tif": fx.vips_jpeg(src, d / "ycbcr-subsampled.tif", rgbjpeg=False),
        "rgb-jpeg.tif": fx.vips_jpeg(src, d / "rgb-jpeg.tif", rgbjpeg=True),
        "rgba.tif": fx.rgba(src, d / "rgba.tif"),
        "grey16.tif": fx.grey16(src, d / "grey16.tif"),
        "grey8.tif": fx.grey8(src, d / "grey8.tif"),
        "palette.tif": fx.palette(src, d / "palette.tif"),
    }


def _assert_agrees(path: Path) -> list[str]:
    with open_slide(path, mpp=0.5) as slide:
        checks = check_colours(slide, regions=3, size=192, seed=1)
        assert checks, f"{path.name}: no independent decoder read it"
        bad = [c for c in checks if not c.agrees]
        assert not bad, (f"{path.name}: colours differ from {bad[0].decoder} at level {bad[0].level} "
                         f"(mean |diff| {bad[0].mean_abs_diff:.2f}, p99 {bad[0].p99_abs_diff:.1f})")
        assert {c.level for c in checks} == ({0, 1} if len(slide.info.levels) > 1 else {0})
        assert slide.info.colour is not None
        return list(slide.info.colour.conversions)


@pytest.mark.parametrize("name", REAL)
def test_real_slides_match_independent_decoders(name: str) -> None:
    _assert_agrees(need_slide(name))


@pytest.mark.parametrize("name,conversion", [
    ("ycbcr-tagged-rgb.tif", "jfif-ycbcr-to-rgb"),
    ("ycbcr-tagged-rgb.svs", "jfif-ycbcr-to-rgb"),
    ("ycbcr-subsampled.tif", None),
    ("rgb-jpeg.tif", None),
    ("rgba.tif", "alpha-flattened-on-white"),
    ("grey16.tif", "16-bit-to-8-bit"),
    ("grey8.tif", "grey-to-rgb"),
    ("palette.tif", None),
])
def test_fixtures_match_independent_decoders(fixtures: dict[str, Path], name: str, conversion: str | None) -> None:
    conversions = _assert_agrees(fixtures[name])
    if conversion is not None:
        assert conversion in conversions, conversions


def test_removing_the_ycbcr_conversion_is_caught(fixtures: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: without the conversion, the trap files disagree with tifffile, naming the file."""
    monkeypatch.setattr(colour_mod, "_ycbcr_to_rgb", lambda image: image)
    for path in (fixtures["ycbcr-tagged-rgb.tif"], fixtures["ycbcr-tagged-rgb.svs"]):
        with pytest.raises(AssertionError, match=path.name):
            _assert_agrees(path)
    ome = find_slide("OS-2-vsi.ome.tif")
    if ome.is_file():
        with pytest.raises(AssertionError, match="OS-2-vsi"):
            _assert_agrees(ome)


def test_ome_thumbnail_matches_tifffile() -> None:
    """Done-when: OS-2-vsi's thumbnail (what tissue detection sees) matches tifffile's decode, block-averaged
    to the same size: white glass and brown DAB, not pink glass and blue DAB."""
    path = need_slide("OS-2-vsi.ome.tif")
    ref = tifffile.imread(path).astype(np.float64)
    with open_slide(path) as slide:
        f = 5
        thumb = slide.scaled(slide.info.mpp * f).read_all().astype(np.float64)
    h, w = thumb.shape[0] - 1, thumb.shape[1] - 1
    ref_small = ref[: h * f, : w * f].reshape(h, f, w, f, 3).mean(axis=(1, 3))
    assert np.abs(thumb[:h, :w] - ref_small).mean() <= 1.5
    corner = thumb[:40, :40].mean(axis=(0, 1))  # glass
    assert corner.min() > 180 and corner.max() - corner.min() < 25, corner


def test_cmyk_is_converted_not_truncated(tmp_path: Path) -> None:
    src = _source()[:256, :256]
    with open_slide(fx.cmyk(src, tmp_path / "cmyk.tif"), mpp=0.5) as slide:
        assert slide.info.colour is not None and "cmyk-to-srgb" in slide.info.colour.conversions
        got = slide.scaled(0.5).read_all().astype(np.float64)
    # libvips converts through an ICC CMYK profile, so values differ from the naive formula; the hue and
    # the lightness order must still be the source's (taking the first three bands would invert them).
    corr = np.corrcoef(got.mean(axis=2).ravel(), src.astype(np.float64).mean(axis=2).ravel())[0, 1]
    assert corr > 0.9, corr


def test_jpeg_colour_space_markers() -> None:
    jfif = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x02\x00\x00\x01\x00\x01\x00\x00"
    adobe0 = b"\xff\xd8\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
    adobe1 = b"\xff\xd8\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x01"
    sof = lambda ids: b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x10\x00\x10\x03" + b"".join(  # noqa: E731
        bytes([i, 0x11, 0]) for i in ids)
    assert colour_mod.jpeg_colour_space(jfif) == "ycbcr"
    assert colour_mod.jpeg_colour_space(adobe0) == "rgb"
    assert colour_mod.jpeg_colour_space(adobe1) == "ycbcr"
    assert colour_mod.jpeg_colour_space(sof((1, 2, 3))) == "ycbcr"
    assert colour_mod.jpeg_colour_space(sof((82, 71, 66))) == "rgb"
    assert colour_mod.jpeg_colour_space(sof((0, 1, 2))) == "unknown"  # Aperio: trust the TIFF tag
    assert colour_mod.jpeg_colour_space(b"not a jpeg", None) == "unknown"


def test_icc_transform_is_a_recorded_choice(tcga_slide: Path, tmp_path: Path) -> None:
    """TCGA's SVS embeds HP's sRGB IEC61966-2.1 profile: converting through it is (near) identity, and
    the choice is recorded either way. A Display P3 profile really changes the pixels."""
    import pyvips

    with (open_slide(tcga_slide, mpp=0.25) as raw,
          open_slide(tcga_slide, mpp=0.25, colour_transform="icc-to-srgb") as icc):
        assert raw.info.colour is not None and icc.info.colour is not None
        assert "not applied" in raw.info.colour.icc
        assert "converted to sRGB" in icc.info.colour.icc
        assert "icc-to-srgb" in icc.info.colour.conversions  # every level: the profile is the slide's
        a = raw.scaled(1.0).read(0, 0, 256, 256).astype(int)
        b = icc.scaled(1.0).read(0, 0, 256, 256).astype(int)
        assert np.abs(a - b).max() <= 2

    src = _source()[:256, :256]
    p3 = pyvips.Image.new_from_array(src, interpretation="srgb").icc_import(input_profile="srgb")
    profile = p3.icc_export(output_profile="p3").get("icc-profile-data")
    path = tmp_path / "p3.tif"
    tifffile.imwrite(path, src, photometric="rgb", iccprofile=profile, resolution=(20000.0, 1.0),
                     resolutionunit="CENTIMETER", metadata=None)
    with open_slide(path, colour_transform="icc-to-srgb") as icc, open_slide(path) as raw:
        assert icc.info.colour is not None and icc.info.colour.conversions == ("icc-to-srgb",)
        diff = np.abs(icc.scaled(0.5).read_all().astype(int) - raw.scaled(0.5).read_all().astype(int))
        assert diff.mean() > 0.5 and diff.max() >= 8  # P3 values read as sRGB: stain pixels shift most


def test_report_and_info_record_the_colour_pipeline(runner, fixtures: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    from slidefuse.cli import cli

    res = runner.invoke(cli, ["info", str(fixtures["ycbcr-tagged-rgb.tif"]), "--json", "--check-colours"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["colour"]["conversions"] == ["jfif-ycbcr-to-rgb"]
    assert d["colour"]["stored"][0] == "jpeg rgb (stream ycbcr)"
    assert d["colour_check"] and all(c["agrees"] for c in d["colour_check"])
