"""`--formats probs` (probs.ome.tif) and, with zarr, probs.zarr: read back with tifffile's OME reader and
ome-zarr's reader (not ours); the argmax of the probabilities is mask.tif; the raw scratch files are gone."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from slidefuse.runtime.outputs import DEFAULT_FORMATS, OutputError, OutputOptions, parse_formats
from slidefuse.runtime.outputs.probs import open_probs

from .test_outputs_common import make_result

tifffile = pytest.importorskip("tifffile")
pytest.importorskip("zarr")
ome_zarr_reader = pytest.importorskip("ome_zarr.reader")
ome_zarr_io = pytest.importorskip("ome_zarr.io")

OME_NS = {"ome": "http://www.openmicroscopy.org/Schemas/OME/2016-06"}


def argmax_agreement(probs: np.ndarray, mask: np.ndarray) -> float:
    """Share of covered pixels (some channel > 0) without a tie for the top value where argmax(probs) == mask.
    ``probs``: uint8 [C, H, W]; ``mask``: uint8 [H, W]."""
    top = probs.max(axis=0)
    tie = (probs == top).sum(axis=0) > 1
    judged = (top > 0) & ~tie
    return float((np.argmax(probs, axis=0) == mask)[judged].mean())


@pytest.fixture(scope="module")
def probs_run(tmp_path_factory: pytest.TempPathFactory, synthetic_tiff: Path) -> Path:
    from click.testing import CliRunner

    from slidefuse.cli import cli

    from .onnx_models import make_bundle as make_onnx_bundle

    tmp = tmp_path_factory.mktemp("probs")
    bundle = tmp / "bundle"
    make_onnx_bundle(bundle, tile_size=64, mpp=2.0, overlap=16)
    out = tmp / "out"
    res = CliRunner().invoke(cli, ["segment", str(synthetic_tiff), "--model", str(bundle), "--out", str(out),
                                   "--formats", "tiff,probs,zarr", "--threads", "1", "--workers", "2"])
    assert res.exit_code == 0, res.output
    return out / "synthetic"


def test_probs_ome_tif_is_an_ome_pyramid_with_named_channels_and_pixel_sizes(probs_run: Path) -> None:
    report = json.loads((probs_run / "report.json").read_text())
    names = [c["name"] for c in report["model"]["classes"]]  # the bundle's classes, in order
    mpp = report["mask"]["mpp"]
    with tifffile.TiffFile(probs_run / "probs.ome.tif") as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert series.axes == "CYX" and series.dtype == np.uint8
        assert series.shape == (len(names), report["mask"]["height"], report["mask"]["width"])
        pixels = ET.fromstring(tif.ome_metadata).find("ome:Image/ome:Pixels", OME_NS)
        assert pixels is not None
        assert [ch.get("Name") for ch in pixels.findall("ome:Channel", OME_NS)] == names
        assert float(pixels.get("PhysicalSizeX")) == pytest.approx(mpp)  # type: ignore[arg-type]
        assert float(pixels.get("PhysicalSizeY")) == pytest.approx(mpp)  # type: ignore[arg-type]
        assert len(series.levels) >= 2
        for level in series.levels:  # every level carries its own pixel size (px/cm)
            page = level.keyframe
            num, den = page.tags["XResolution"].value
            assert page.tags["ResolutionUnit"].value == 3
            assert 1e4 * den / num == pytest.approx(mpp * series.shape[2] / level.shape[2], rel=1e-4)
        probs = series.asarray()
    with tifffile.TiffFile(probs_run / "mask.tif") as tif:
        mask = tif.pages[0].asarray()
    assert argmax_agreement(probs, mask) >= 0.999
    assert not probs[:, mask != 0].sum(axis=0).min() == 0  # every labelled pixel has probabilities
    assert report["outputs"]["probs"]["levels"] == len(series.levels)


def test_probs_zarr_opens_with_ome_zarr_and_equals_the_tiff(probs_run: Path) -> None:
    nodes = list(ome_zarr_reader.Reader(ome_zarr_io.parse_url(str(probs_run / "probs.zarr")))())
    assert nodes
    node = nodes[0]
    levels = [np.asarray(level) for level in node.data]
    with tifffile.TiffFile(probs_run / "probs.ome.tif") as tif:
        tiff_levels = [level.asarray() for level in tif.series[0].levels]
    assert len(levels) == len(tiff_levels)
    np.testing.assert_array_equal(levels[0], tiff_levels[0])
    for z, t in zip(levels[1:], tiff_levels[1:], strict=True):
        assert z.shape == t.shape and np.abs(z.astype(int) - t).max() <= 1  # both 2x2 means of the same planes
    assert [a["name"] for a in node.metadata["axes"]] == ["c", "y", "x"]
    report = json.loads((probs_run / "report.json").read_text())
    assert node.metadata["channel_names"] == [c["name"] for c in report["model"]["classes"]]
    scale0 = node.metadata["coordinateTransformations"][0][0]["scale"]
    assert scale0 == pytest.approx([1.0, report["mask"]["mpp"], report["mask"]["mpp"]])
    assert {"probs", "probs-zarr", "zarr"} <= set(report["formats"])


def test_no_scratch_files_are_left(probs_run: Path) -> None:
    left = [p.name for p in probs_run.iterdir() if p.name.endswith((".tmp", ".partial")) or "raw" in p.name]
    assert left == []


def test_probs_are_opt_in_and_zarr_pairs_them() -> None:
    assert "probs" not in DEFAULT_FORMATS and "probs" in parse_formats("all")
    assert "probs-zarr" in OutputOptions(formats=parse_formats("probs,zarr")).formats
    assert "probs-zarr" not in OutputOptions(formats=parse_formats("probs")).formats


def test_missing_probabilities_are_a_clear_error(tmp_path: Path) -> None:
    result = make_result(np.zeros((8, 8), np.uint8), tmp_path / "mask.raw", mpp=1.0)
    with pytest.raises(OutputError, match="'probs' output format"):
        open_probs(result, 3)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs", "TCGA-CR-7395-01A-01-TS1.svs", "OS-2-vsi.ome.tif"])
def test_argmax_of_the_probabilities_is_the_mask_on_the_real_slides(tmp_path: Path, name: str) -> None:
    """On the three real slides (colour-classifier bundle at 1 um/px, 128 px tiles, overlap 32): the argmax of
    probs.ome.tif (read with tifffile) equals mask.tif on >= 99.9% of the tissue pixels without a rounding tie,
    and mask.geojson's features carry a mean probability."""
    from click.testing import CliRunner

    from slidefuse.cli import cli
    from tests.conftest import need_slide

    from .onnx_models import make_bundle as make_onnx_bundle

    slide = need_slide(name)
    bundle = tmp_path / "bundle"
    make_onnx_bundle(bundle, tile_size=128, mpp=1.0, overlap=32)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["segment", str(slide), "--model", str(bundle), "--out", str(out),
                                   "--formats", "tiff,probs,geojson", "--threads", "1", "--workers", "2",
                                   "--mpp", "0.5"])  # used only for slides without a pixel size (the TCGA one)
    assert res.exit_code == 0, res.output
    folder = next(out.glob("*/report.json")).parent
    with tifffile.TiffFile(folder / "probs.ome.tif") as tif:
        probs = tif.series[0].asarray()
    with tifffile.TiffFile(folder / "mask.tif") as tif:
        mask = tif.pages[0].asarray()
    tissue = probs.max(axis=0) > 0
    assert tissue.mean() > 0.05, "too little of the slide ran to judge"
    assert argmax_agreement(probs, mask) >= 0.999
    features = json.loads((folder / "mask.geojson").read_text())["features"]
    assert features and all(0 <= f["properties"]["measurements"]["Mean probability"] <= 1 for f in features)
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_a_rerun_knows_probs_files_and_the_scratch_file(tmp_path: Path) -> None:
    """report.json records probs.ome.tif and probs.zarr with their sizes: complete outputs are current, a
    changed or missing one is not, and a left-over raw probabilities file counts as an interrupted run."""
    import dataclasses

    from slidefuse.runtime.outputs import write_outputs

    from .test_outputs_common import blobby_mask, current, make_bundle, make_slide

    mask = blobby_mask(90, 130, seed=2)
    probs = np.zeros((90, 130, 3), np.uint8)
    probs[np.arange(90)[:, None], np.arange(130)[None, :], mask] = 200
    probs.tofile(tmp_path / "probs.raw.tmp")
    result = dataclasses.replace(make_result(mask, tmp_path / "mask.raw.tmp", mpp=1.0),
                                 probs_path=tmp_path / "probs.raw.tmp")
    out = tmp_path / "out"
    formats = parse_formats("tiff,probs,zarr")
    write_outputs(result, make_slide(260, 180, 0.5), make_bundle(tmp_path), out, OutputOptions(formats=formats))
    assert current(out, formats)
    (out / "probs.raw.tmp").write_bytes(b"left by a killed run")
    assert not current(out, formats)
    (out / "probs.raw.tmp").unlink()
    with open(out / "probs.ome.tif", "ab") as f:
        f.write(b"x")
    assert not current(out, formats)
    with tifffile.TiffFile(out / "mask.tif") as tif:
        np.testing.assert_array_equal(tif.pages[0].asarray(), mask)


@pytest.mark.parametrize("bigtiff", [False, True])
def test_every_level_carries_its_own_pixel_size(tmp_path: Path, bigtiff: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """libvips gives every SubIFD level the full-resolution resolution tags; the writer patches them in place, in
    classic TIFF and BigTIFF, without moving a pixel (tifffile reads the planes back unchanged)."""
    import dataclasses

    from slidefuse.runtime.outputs import probs as probs_module

    from .test_outputs_common import CLASSES

    if bigtiff:
        monkeypatch.setattr(probs_module, "BIGTIFF_BYTES", 1)
    h, w = 700, 1030
    values = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    values.tofile(tmp_path / "p.raw")
    result = dataclasses.replace(make_result(np.zeros((h, w), np.uint8), tmp_path / "m.raw", mpp=0.75),
                                 probs_path=tmp_path / "p.raw")
    info = probs_module.write_probs_tiff(result, "s", CLASSES, tmp_path / "probs.ome.tif")
    with tifffile.TiffFile(tmp_path / "probs.ome.tif") as tif:
        assert tif.is_bigtiff == bigtiff and tif.is_ome
        series = tif.series[0]
        assert len(series.levels) == info["levels"] == 4
        np.testing.assert_array_equal(series.asarray(), np.moveaxis(values, -1, 0))
    with tifffile.TiffFile(tmp_path / "probs.ome.tif") as tif:  # pages, not the series' frames
        checked = 0
        for k in range(3):  # each plane's main IFD, then its SubIFDs
            plane = tif.pages[k]
            levels = []
            for j, offset in enumerate(plane.subifds or ()):
                tif.filehandle.seek(offset)  # tifffile reads a page where the file stands
                levels.append(tifffile.TiffPage(tif, index=(k, j)))
            for page in [plane, *levels]:
                for tag, size, full in (("XResolution", page.imagewidth, w), ("YResolution", page.imagelength, h)):
                    num, den = page.tags[tag].value
                    assert 1e4 * den / num == pytest.approx(0.75 * full / size, rel=1e-4)
                checked += 1
        assert checked == 3 * 4
