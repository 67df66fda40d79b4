"""`--formats palette` (mask.palette.tif): mask.tif's class indices with the class colours as a TIFF colour map,
checked with three readers we did not write: tifffile (indices + colour map), libvips (colours), OpenSlide
(colours); mask.tif itself stays plain indices for slidefuse's own readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pyvips

from slidefuse.runtime.outputs import OutputOptions, parse_formats, write_outputs

from .test_outputs_common import CLASSES, blobby_mask, make_bundle, make_result, make_slide

tifffile = pytest.importorskip("tifffile")


@pytest.mark.parametrize("bigtiff", [False, True])
def test_palette_tif_keeps_indices_and_shows_class_colours(tmp_path: Path, bigtiff: bool,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    if bigtiff:  # the BigTIFF layout (slides above 2**31 px), on a small mask
        monkeypatch.setattr("slidefuse.runtime.outputs.mask_tiff.BIGTIFF_PIXELS", 1)
    mask = blobby_mask(700, 1030, seed=3)
    result = make_result(mask, tmp_path / "m.raw", mpp=1.0)
    paths = write_outputs(result, make_slide(2060, 1400, 0.5), make_bundle(tmp_path), tmp_path / "out",
                          OutputOptions(formats=parse_formats("tiff,palette")))
    colours = np.array([c.color for c in CLASSES], dtype=np.uint8)
    with tifffile.TiffFile(paths["palette"]) as pal, tifffile.TiffFile(paths["tiff"]) as plain:
        assert pal.is_bigtiff == bigtiff
        assert len(pal.pages) == len(plain.pages) == 4
        for p, q in zip(pal.pages, plain.pages, strict=True):
            assert p.photometric == tifffile.PHOTOMETRIC.PALETTE
            assert q.photometric == tifffile.PHOTOMETRIC.MINISBLACK
            np.testing.assert_array_equal(p.asarray(), q.asarray())  # the same class indices, every level
            np.testing.assert_array_equal(p.colormap[:, : len(CLASSES)].T, colours.astype(np.uint16) * 257)
            assert (p.tags["XResolution"].value, p.tags["ResolutionUnit"].value) == (
                q.tags["XResolution"].value, q.tags["ResolutionUnit"].value)
    shown = pyvips.Image.new_from_file(str(paths["palette"]))  # libvips expands the palette to RGB
    assert shown.bands == 3
    np.testing.assert_array_equal(shown.numpy(), colours[mask])
    plain_vips = pyvips.Image.new_from_file(str(paths["tiff"]))
    assert plain_vips.bands == 1
    np.testing.assert_array_equal(plain_vips.numpy().reshape(mask.shape), mask)  # mask.tif: indices


def test_openslide_shows_the_palette_colours(tmp_path: Path) -> None:
    openslide = pytest.importorskip("openslide")
    mask = blobby_mask(300, 400, seed=5)
    result = make_result(mask, tmp_path / "m.raw", mpp=1.0)
    paths = write_outputs(result, make_slide(800, 600, 0.5), make_bundle(tmp_path), tmp_path / "out",
                          OutputOptions(formats=parse_formats("palette")))
    with openslide.OpenSlide(str(paths["palette"])) as slide:
        rgba = np.asarray(slide.read_region((0, 0), 0, (400, 300)))
    colours = np.array([c.color for c in CLASSES], dtype=np.uint8)
    np.testing.assert_array_equal(rgba[..., :3], colours[mask])
    assert (rgba[..., 3] == 255).all()
