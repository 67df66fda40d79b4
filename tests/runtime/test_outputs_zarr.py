"""`--formats zarr` (`mask.zarr`): an OME-NGFF multiscale label image read back with `ome-zarr`'s own reader,
whose levels equal mask.tif's (read with tifffile), with the pixel size in its metadata, written in bounded
memory, opt-in (not a default format), and through `slidefuse segment --formats zarr`."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from slidefuse.runtime.outputs import DEFAULT_FORMATS, OutputOptions, parse_formats, write_outputs
from slidefuse.runtime.outputs.zarr import write_mask_zarr

from .test_outputs_common import CLASSES, blobby_mask, make_bundle, make_result, make_slide

pytest.importorskip("zarr")
ome_zarr_reader = pytest.importorskip("ome_zarr.reader")
ome_zarr_io = pytest.importorskip("ome_zarr.io")
tifffile = pytest.importorskip("tifffile")


def _read_ome_zarr(path: Path) -> tuple[list[np.ndarray], dict]:
    """Every level of the first image node ome-zarr finds, and that node's metadata."""
    nodes = list(ome_zarr_reader.Reader(ome_zarr_io.parse_url(str(path)))())
    assert nodes, f"ome-zarr found no image in {path}"
    return [np.asarray(level) for level in nodes[0].data], nodes[0].metadata


def test_zarr_levels_equal_mask_tif_levels_and_carry_the_pixel_size(tmp_path: Path) -> None:
    mask = blobby_mask(700, 1030, seed=3)  # odd-sized levels down the pyramid
    result = make_result(mask, tmp_path / "mask.raw", mpp=0.5)
    out = tmp_path / "out"
    paths = write_outputs(result, make_slide(4120, 2800, 0.125), make_bundle(tmp_path), out,
                          OutputOptions(formats=parse_formats("tiff,zarr")))
    levels, meta = _read_ome_zarr(paths["zarr"])
    with tifffile.TiffFile(paths["tiff"]) as tif:
        tiff_levels = [page.asarray() for page in tif.pages]
    assert len(levels) == len(tiff_levels) == 4
    for k, (z, t) in enumerate(zip(levels, tiff_levels, strict=True)):
        assert z.dtype == np.uint8 and z.shape == t.shape, k
        np.testing.assert_array_equal(z, t, err_msg=f"level {k}")
    np.testing.assert_array_equal(levels[0], mask)
    scales = [t[0]["scale"] for t in meta["coordinateTransformations"]]
    for (h, w), scale in zip((lv.shape for lv in levels), scales, strict=True):
        assert scale == pytest.approx([700 * 0.5 / h, 1030 * 0.5 / w])
    assert scales[0] == pytest.approx([0.5, 0.5])
    assert [a["unit"] for a in meta["axes"]] == ["micrometer", "micrometer"]
    attrs = json.loads((paths["zarr"] / ".zattrs").read_text())
    props = attrs["image-label"]["properties"]
    assert [(p["label-value"], p["class"]) for p in props] == [(i, c.name) for i, c in enumerate(CLASSES)]
    report = json.loads((out / "report.json").read_text())
    assert report["outputs"]["zarr"]["levels"] == 4 and "zarr" in report["formats"]
    assert not [p for p in out.iterdir() if "partial" in p.name]  # scratch pyramid and staging folder gone


def test_zarr_is_opt_in() -> None:
    assert "zarr" not in DEFAULT_FORMATS and "zarr" in parse_formats("all")


def test_zarr_is_written_in_bounded_memory(tmp_path: Path) -> None:
    h, w = 4000, 6000  # 24 MB of class indices
    mask = np.zeros((h, w), np.uint8)
    mask[1000:3000, 1500:4500] = 1
    mask[::7, ::5] = 2
    result = make_result(mask, tmp_path / "mask.raw", mpp=1.0)
    del mask
    tracemalloc.start()
    try:
        info = write_mask_zarr(result, "big", CLASSES, tmp_path / "mask.zarr")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info["levels"] == 6
    assert peak < 24_000_000 / 4, peak  # a band of 256 rows is 1.5 MB; the whole mask would be 24 MB


def test_segment_cli_writes_zarr(tmp_path: Path, synthetic_tiff: Path) -> None:
    from click.testing import CliRunner

    from slidefuse.cli import cli

    from .onnx_models import make_bundle as make_onnx_bundle

    bundle = tmp_path / "bundle"
    make_onnx_bundle(bundle, tile_size=64, mpp=2.0, overlap=16)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["segment", str(synthetic_tiff), "--model", str(bundle), "--out", str(out),
                                   "--formats", "tiff,zarr", "--threads", "1", "--workers", "2"])
    assert res.exit_code == 0, res.output
    levels, _ = _read_ome_zarr(out / "synthetic" / "mask.zarr")
    with tifffile.TiffFile(out / "synthetic" / "mask.tif") as tif:
        np.testing.assert_array_equal(levels[0], tif.pages[0].asarray())
