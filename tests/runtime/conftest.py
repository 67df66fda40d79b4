"""Fixtures for runtime tests (and others that need slides): synthetic pyramidal TIFFs with and without a pixel
size, deliberately broken slide files, and an in-memory slide. The synthetic slide needs no real slide."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

SYNTH_W, SYNTH_H = 2048, 1536  # level-0 size of the synthetic slide, px
SYNTH_MPP = 0.5  # its pixel size, um/px (written in the TIFF resolution tags)


def synthetic_rgb(width: int = SYNTH_W, height: int = SYNTH_H, seed: int = 0) -> np.ndarray:
    """uint8 [height, width, 3] RGB: H&E-coloured textured blobs (about a third of the area) on white glass."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 245, dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    blobs = np.zeros((height, width), dtype=bool)
    for cx, cy, rx, ry in [(0.3, 0.35, 0.17, 0.22), (0.68, 0.6, 0.2, 0.25), (0.85, 0.15, 0.07, 0.08)]:
        blobs |= ((xx - cx * width) / (rx * width)) ** 2 + ((yy - cy * height) / (ry * height)) ** 2 <= 1.0
    pink = np.array([225, 130, 180], dtype=np.int16)
    purple = np.array([120, 70, 150], dtype=np.int16)
    nuclei = rng.random((height, width)) < 0.08
    tex = np.where(nuclei[..., None], purple, pink) + rng.integers(-20, 21, (height, width, 1), dtype=np.int16)
    img[blobs] = np.clip(tex[blobs], 0, 255).astype(np.uint8)
    return img


def write_pyramid_tiff(array: np.ndarray, path: Path, mpp: float | None, tile: int = 256, q: int = 90) -> Path:
    """Write uint8 [H, W, 3] RGB as a tiled, pyramidal JPEG TIFF; the pixel size goes in the resolution tags
    (px/cm) when `mpp` is given, else the tags stay at libvips' 1 px/mm placeholder."""
    import pyvips

    image = pyvips.Image.new_from_array(np.ascontiguousarray(array), interpretation="srgb")
    kw = {} if mpp is None else {"xres": 1000.0 / mpp, "yres": 1000.0 / mpp, "resunit": "cm"}
    image.tiffsave(
        str(path), tile=True, tile_width=tile, tile_height=tile, pyramid=True, compression="jpeg", Q=q, **kw
    )
    return path


@pytest.fixture(scope="session")
def synthetic_array() -> np.ndarray:
    """The pixels of `synthetic_tiff` before JPEG: uint8 [1536, 2048, 3] RGB at 0.5 um/px."""
    return synthetic_rgb()


@pytest.fixture(scope="session")
def synthetic_tiff(tmp_path_factory: pytest.TempPathFactory, synthetic_array: np.ndarray) -> Path:
    """A 2048x1536 pyramidal tiled JPEG TIFF at 0.5 um/px (in its resolution tags), 4 levels."""
    return write_pyramid_tiff(synthetic_array, tmp_path_factory.mktemp("synth") / "synthetic.tif", SYNTH_MPP)


@pytest.fixture(scope="session")
def synthetic_tiff_no_mpp(tmp_path_factory: pytest.TempPathFactory, synthetic_array: np.ndarray) -> Path:
    """The same slide without a pixel size (resolution tags at the 1 px/mm placeholder)."""
    return write_pyramid_tiff(synthetic_array, tmp_path_factory.mktemp("synth") / "no_mpp.tif", None)


@pytest.fixture(scope="session")
def make_tiff(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: make_tiff(array, mpp=0.5, name="x.tif", tile=256) -> Path of a pyramidal JPEG TIFF."""
    folder = tmp_path_factory.mktemp("made")

    def make(array: np.ndarray, mpp: float | None = SYNTH_MPP, name: str = "slide.tif", tile: int = 256) -> Path:
        return write_pyramid_tiff(array, folder / name, mpp, tile=tile)

    return make


def _truncated_copy(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.fixture(params=["truncated-svs", "text-svs", "text-tif", "empty-tif"])
def corrupt_slide(request: pytest.FixtureRequest, tmp_path: Path, synthetic_tiff: Path) -> Path:
    """A file that is not a readable slide: a truncated copy of the real CMU slide (of the synthetic TIFF when
    the real slide is absent), a text file named .svs or .tif, an empty .tif."""
    from tests.conftest import CMU

    kind = request.param
    if kind == "truncated-svs":
        src = CMU if CMU.is_file() else synthetic_tiff
        return _truncated_copy(src, tmp_path / "truncated.svs", 0.5)
    if kind == "text-svs":
        p = tmp_path / "notes.svs"
        p.write_text("this is not a slide\n")
        return p
    if kind == "text-tif":
        p = tmp_path / "notes.tif"
        p.write_text("this is not a slide either\n")
        return p
    p = tmp_path / "empty.tif"
    p.write_bytes(b"")
    return p


@pytest.fixture
def garbled_tiff(tmp_path: Path, synthetic_tiff: Path) -> Path:
    """A copy of `synthetic_tiff` whose level-0 tile data is overwritten with noise (headers intact):
    it opens, but decoding its full-resolution pixels fails."""
    dst = tmp_path / "garbled.tif"
    shutil.copyfile(synthetic_tiff, dst)
    data = bytearray(dst.read_bytes())
    rng = np.random.default_rng(1)
    start, stop = 4096, len(data) // 2  # level 0's tiles come first in a libvips pyramid
    data[start:stop] = rng.integers(0, 256, stop - start, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


@pytest.fixture
def in_memory_slide(synthetic_array: np.ndarray):  # type: ignore[no-untyped-def]
    """InMemorySlide of the synthetic pixels at 0.5 um/px."""
    from slidefuse.runtime.slide import InMemorySlide

    return InMemorySlide(synthetic_array, SYNTH_MPP, name="synthetic-in-memory")
