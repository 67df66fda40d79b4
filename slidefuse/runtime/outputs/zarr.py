"""`mask.zarr`: the class-index mask as an OME-Zarr (OME-NGFF 0.4) multiscale label image.

Layout (zarr format 2, which `ome-zarr`, napari's `napari-ome-zarr` and QuPath's OME-Zarr reader open):

- the root group holds `multiscales` (axes y, x in micrometres; one dataset per level with its pixel size as
  a `scale` transformation, in um/px) and `image-label` (each class's colour and name, by label value);
- `0`, `1`, ...: uint8 [height, width] arrays of class indices (0 = background), 256 x 256 chunks. Level 0 is
  the mask at the model's pixel size; each next level halves it (floor) with the 2x2 mode, exactly the levels
  of `mask.tif` (libvips' pyramid with `region_shrink="mode"`), down to one chunk.

Bounded memory: libvips writes the pyramid from the raw mask on disk into an uncompressed scratch TIFF beside
the output (streamed), and each level is copied from it into zarr one band of chunk rows at a time, so memory
holds one band (256 rows x width) whatever the slide size. The folder is written under a temporary name and
renamed when complete (`slidefuse.atomic.atomic_folder`); report.json records its total bytes and file count,
so a folder that lost or changed a chunk is not taken for complete on a rerun. Needs the `zarr` extra.

`probs.zarr` (format "probs-zarr", chosen by `probs` and `zarr` together): the class probabilities as an
OME-Zarr multiscale image beside it: axes c, y, x; uint8 [C, height, width] arrays (round(p * 255), as
probs.ome.tif), chunks of one channel x 256 x 256; each level the 2x2 mean of the one above, as probs.ome.tif's;
`omero` names each channel after its class, with the class colour and the window 0..255. Written the same way,
from the stitcher's raw probabilities through a scratch pyramid, one band of chunk rows at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slidefuse.atomic import TMP_SUFFIX, atomic_folder, temporary_path
from slidefuse.errors import require
from slidefuse.runtime.bundle import ClassInfo
from slidefuse.runtime.outputs.base import OutputContext, OutputOptions, OutputRecord
from slidefuse.runtime.outputs.raster import OutputError, open_mask
from slidefuse.runtime.types import MaskResult

logger = logging.getLogger(__name__)

CHUNK = 256  # chunk side in px, also the pyramid's smallest level side (as mask.tif's tile)
NGFF_VERSION = "0.4"


def _zarr() -> Any:
    return require("zarr", extra="zarr", purpose="--formats zarr (OME-Zarr output)")


def _rgba(colour: Any) -> list[int]:
    """A class colour ("#rrggbb", [r, g, b] or [r, g, b, a]) as NGFF's rgba list of 0..255."""
    if isinstance(colour, str):
        h = colour.lstrip("#")
        return [int(h[i:i + 2], 16) for i in (0, 2, 4)] + [255]
    values = [int(v) for v in colour]
    return values + [255] if len(values) == 3 else values


def ngff_attributes(name: str, level_mpp: list[tuple[float, float]], classes: tuple[ClassInfo, ...]
                    ) -> dict[str, Any]:
    """The root group's attributes: `multiscales` (pixel size per level, um/px, as (y, x) scale) and
    `image-label` (colour and class name of each label value)."""
    datasets = [{"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": [my, mx]}]}
                for k, (mx, my) in enumerate(level_mpp)]
    return {
        "multiscales": [{
            "version": NGFF_VERSION,
            "name": name,
            "axes": [{"name": "y", "type": "space", "unit": "micrometer"},
                     {"name": "x", "type": "space", "unit": "micrometer"}],
            "datasets": datasets,
            "type": "mode",
            "metadata": {"description": "2x2 mode of the level above (class indices stay exact)"},
        }],
        "image-label": {
            "version": NGFF_VERSION,
            "colors": [{"label-value": i, "rgba": _rgba(c.color)} for i, c in enumerate(classes)],
            "properties": [{"label-value": i, "class": c.name} for i, c in enumerate(classes)],
        },
    }


def _scratch_pyramid(result: MaskResult, scratch: Path, image: Any = None, shrink: str = "mode") -> list[Any]:
    """Write the mask's mode pyramid (as mask.tif's), or `image`'s pyramid shrunk by `shrink`, into an
    uncompressed scratch TIFF; its levels, lazily."""
    import pyvips

    image = open_mask(result) if image is None else image
    try:
        image.tiffsave(str(scratch), tile=True, tile_width=CHUNK, tile_height=CHUNK, pyramid=True,
                       region_shrink=shrink, compression="none", bigtiff=True, strip=True)
    except pyvips.Error as exc:
        raise OutputError(f"{scratch}: libvips could not write the pyramid: {exc}".strip()) from exc
    n = int(pyvips.Image.new_from_file(str(scratch)).get("n-pages"))
    return [pyvips.Image.tiffload(str(scratch), page=k, access="sequential") for k in range(n)]


def _new_array(group: Any, name: str, height: int, width: int, channels: int | None = None) -> Any:
    shape: tuple[int, ...] = (height, width)
    chunks: tuple[int, ...] = (min(CHUNK, height), min(CHUNK, width))
    if channels is not None:
        shape, chunks = (channels, *shape), (1, *chunks)
    if hasattr(group, "create_array"):  # zarr >= 3
        return group.create_array(name, shape=shape, chunks=chunks, dtype="uint8", fill_value=0,
                                  chunk_key_encoding={"name": "v2", "separator": "/"})
    return group.create_dataset(name, shape=shape, chunks=chunks, dtype="uint8", fill_value=0,  # zarr 2
                                dimension_separator="/")


def _copy_level(image: Any, array: Any) -> None:
    """Copy a 1-band uchar image into a zarr array [h, w], or a C-band one into [C, h, w], band by band (CHUNK
    rows at a time)."""
    for y in range(0, image.height, CHUNK):
        h = min(CHUNK, image.height - y)
        band = image.crop(0, y, image.width, h).numpy()
        if array.ndim == 3:
            array[:, y:y + h, :] = band.reshape(h, image.width, image.bands).transpose(2, 0, 1)
        else:
            array[y:y + h, :] = band.reshape(h, image.width)


def write_mask_zarr(result: MaskResult, name: str, classes: tuple[ClassInfo, ...], path: Path
                    ) -> dict[str, Any]:
    """Write `mask.zarr` (OME-NGFF multiscale label image) atomically; returns its description."""
    zarr = _zarr()
    t0 = time.perf_counter()
    scratch = Path(str(temporary_path(Path(path))) + ".tif" + TMP_SUFFIX)
    try:
        levels = _scratch_pyramid(result, scratch)
        level_mpp = [(result.mask_width * result.mpp / im.width, result.mask_height * result.mpp / im.height)
                     for im in levels]
        with atomic_folder(Path(path)) as stage:
            root = zarr.open_group(str(stage), mode="w", zarr_format=2) if _is_v3(zarr) else \
                zarr.open_group(str(stage), mode="w")
            for k, im in enumerate(levels):
                _copy_level(im, _new_array(root, str(k), im.height, im.width))
            root.attrs.update(ngff_attributes(name, level_mpp, classes))
            del levels
    finally:
        scratch.unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    logger.info("wrote %s (%dx%d, %d levels, %.3g um/px) in %.2f s", path, result.mask_width,
                result.mask_height, len(level_mpp), result.mpp, seconds)
    return {
        "file": Path(path).name,
        "ngff_version": NGFF_VERSION,
        "zarr_format": 2,
        "width": result.mask_width,
        "height": result.mask_height,
        "levels": len(level_mpp),
        "level_mpp": [list(m) for m in level_mpp],
        "chunk": CHUNK,
        "downsampling": "mode",
        "seconds": seconds,
    }


def probs_ngff_attributes(name: str, level_mpp: list[tuple[float, float]], classes: tuple[ClassInfo, ...]
                          ) -> dict[str, Any]:
    """probs.zarr's root attributes: `multiscales` (axes c, y, x; pixel size per level, um/px) and `omero`
    (each channel's class name and colour, window 0..255)."""
    datasets = [{"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": [1.0, my, mx]}]}
                for k, (mx, my) in enumerate(level_mpp)]
    channels = [{"label": c.name, "color": "".join(f"{v:02X}" for v in _rgba(c.color)[:3]), "active": True,
                 "coefficient": 1.0, "family": "linear", "inverted": False,
                 "window": {"start": 0, "end": 255, "min": 0, "max": 255}} for c in classes]
    return {
        "multiscales": [{
            "version": NGFF_VERSION,
            "name": name,
            "axes": [{"name": "c", "type": "channel"},
                     {"name": "y", "type": "space", "unit": "micrometer"},
                     {"name": "x", "type": "space", "unit": "micrometer"}],
            "datasets": datasets,
            "type": "mean",
            "metadata": {"description": "class probabilities, round(p * 255); 2x2 mean of the level above"},
        }],
        "omero": {"name": name, "version": NGFF_VERSION, "channels": channels,
                  "rdefs": {"model": "color", "defaultT": 0, "defaultZ": 0}},
    }


def write_probs_zarr(result: MaskResult, name: str, classes: tuple[ClassInfo, ...], path: Path
                     ) -> dict[str, Any]:
    """Write `probs.zarr` (OME-NGFF multiscale image of the class probabilities) atomically; its description."""
    from slidefuse.runtime.outputs.probs import open_probs

    zarr = _zarr()
    t0 = time.perf_counter()
    scratch = Path(str(temporary_path(Path(path))) + ".tif" + TMP_SUFFIX)
    try:
        levels = _scratch_pyramid(result, scratch, open_probs(result, len(classes)), shrink="mean")
        level_mpp = [(result.mask_width * result.mpp / im.width, result.mask_height * result.mpp / im.height)
                     for im in levels]
        with atomic_folder(Path(path)) as stage:
            root = zarr.open_group(str(stage), mode="w", zarr_format=2) if _is_v3(zarr) else \
                zarr.open_group(str(stage), mode="w")
            for k, im in enumerate(levels):
                _copy_level(im, _new_array(root, str(k), im.height, im.width, channels=len(classes)))
            root.attrs.update(probs_ngff_attributes(name, level_mpp, classes))
            del levels
    finally:
        scratch.unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    logger.info("wrote %s (%dx%d x %d channels, %d levels) in %.2f s", path, result.mask_width,
                result.mask_height, len(classes), len(level_mpp), seconds)
    return {"file": Path(path).name, "ngff_version": NGFF_VERSION, "zarr_format": 2, "width": result.mask_width,
            "height": result.mask_height, "channels": [c.name for c in classes], "levels": len(level_mpp),
            "level_mpp": [list(m) for m in level_mpp], "chunk": CHUNK, "downsampling": "mean", "seconds": seconds}


def _is_v3(zarr: Any) -> bool:
    return int(str(zarr.__version__).split(".")[0]) >= 3


@dataclass(frozen=True)
class ZarrWriter:
    """Format "zarr": `mask.zarr`, an OME-Zarr multiscale label image at the model's pixel size."""

    name: str = "zarr"
    file_name: str = "mask.zarr"

    def write(self, context: OutputContext) -> OutputRecord:
        path = context.out_dir / self.file_name
        info = write_mask_zarr(context.result, Path(context.slide.path).name, context.classes, path)
        return OutputRecord(path, info)

    def is_current(self, report: Mapping[str, Any], options: OutputOptions) -> bool:
        return True  # mask.zarr takes no options


@dataclass(frozen=True)
class ProbsZarrWriter:
    """Format "probs-zarr": `probs.zarr`, the class probabilities as an OME-Zarr multiscale image (written when
    `probs` and `zarr` are both chosen)."""

    name: str = "probs-zarr"
    file_name: str = "probs.zarr"

    def write(self, context: OutputContext) -> OutputRecord:
        path = context.out_dir / self.file_name
        info = write_probs_zarr(context.result, Path(context.slide.path).name, context.classes, path)
        return OutputRecord(path, info)

    def is_current(self, report: Mapping[str, Any], options: OutputOptions) -> bool:
        return True  # probs.zarr takes no options
