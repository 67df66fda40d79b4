"""The output-writer contract: what a writer gets (`OutputContext`), what it returns (`OutputRecord`), and
the `OutputWriter` protocol every format implements (see `registry` for the formats by name).

A writer turns the stitched mask of one slide into one file in the slide's output folder, written
atomically (`slidefuse.atomic`). Writers run side by side on threads and only read the raw mask, so a
writer must not depend on another writer's file. `report.json` is not a writer: `write_outputs` writes it
last, from the writers' records, as the record that the slide is complete.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from slidefuse.errors import UsageError
from slidefuse.numbers import finite_float, integer
from slidefuse.runtime.bundle import Bundle, ClassInfo
from slidefuse.runtime.types import MaskResult, SlideInfo

GEOJSON_MAX_PIXELS = 1 << 26  # default cap on the grid polygonised for mask.geojson (67 Mpx, 8192 x 8192)
GEOJSON_FRAMES = ("qupath", "level0")  # mask.geojson's coordinate frames (see outputs.geojson.frame_offset)


def _default_formats() -> frozenset[str]:
    from slidefuse.runtime.outputs.registry import DEFAULT_FORMATS

    return DEFAULT_FORMATS


@dataclass(frozen=True)
class OutputOptions:
    """Which outputs are made and how; the same options are used to check on a rerun that they are current.
    Built once per run (a `SegmentOptions` holds one): the formats are already parsed (`parse_formats`)."""

    formats: frozenset[str] = field(default_factory=_default_formats)  # registered format names to write;
    # report.json is written in any case (default: every built-in format, `registry.DEFAULT_FORMATS`)
    mask_mpp: float | None = None  # mask.tif um/px (>= the model's, mode-downsampled); None = the model's
    geojson_mpp: float | None = None  # pixel size of the grid polygonised for mask.geojson; None = the mask's
    geojson_max_pixels: int | None = GEOJSON_MAX_PIXELS  # cap on that grid's pixels; None = no cap
    geojson_frame: str = "qupath"  # mask.geojson's coordinates: "qupath" (level 0 minus the bounds) or "level0"

    def __post_init__(self) -> None:
        _check_formats(self.formats)
        if {"probs", "zarr"} <= self.formats:  # probabilities and OME-Zarr: the probabilities as OME-Zarr too
            object.__setattr__(self, "formats", self.formats | {"probs-zarr"})
        for name in ("mask_mpp", "geojson_mpp"):
            value = getattr(self, name)
            if value is not None:  # nan, inf and bools refused; numpy scalars become floats
                object.__setattr__(self, name, finite_float(
                    value, field=name, above=0, what="a positive, finite number of microns per pixel"))
        if self.geojson_frame not in GEOJSON_FRAMES:
            raise UsageError(f"geojson_frame must be one of {', '.join(GEOJSON_FRAMES)}, got {self.geojson_frame!r}",
                             field="geojson_frame")
        if self.geojson_max_pixels is not None:
            object.__setattr__(self, "geojson_max_pixels", integer(
                self.geojson_max_pixels, field="geojson_max_pixels", minimum=1))


def _check_formats(formats: frozenset[str]) -> None:
    """Refuse formats that are not a frozenset of registered names (a string is parsed by `parse_formats`)."""
    from slidefuse.runtime.outputs.registry import format_names

    if not isinstance(formats, frozenset):
        raise UsageError(f"formats must be a frozenset of format names, got {formats!r}; parse_formats() turns "
                         "'tiff,geojson' into one", field="formats")
    unknown = sorted(formats - set(format_names()))
    if unknown:
        raise UsageError(f"output format(s) {', '.join(unknown)} not registered; registered: "
                         f"{', '.join(format_names())}", field="formats")


@dataclass(frozen=True)
class OutputContext:
    """Everything a writer may read. The mask is on disk; nothing here is changed by a writer."""

    result: MaskResult  # the stitched mask: raw uint8 class indices [mask_height, mask_width] at result.mpp
    slide: SlideInfo  # the slide the mask covers (level-0 size, pixel size, path)
    bundle: Bundle  # the model that made the mask (classes and their colours, encoder, mpp)
    out_dir: Path  # the slide's output folder; a writer writes `out_dir / file_name` and nothing else
    options: OutputOptions = field(default_factory=OutputOptions)

    @property
    def classes(self) -> tuple[ClassInfo, ...]:
        """The model's classes, index 0 = background."""
        return tuple(self.bundle.manifest.classes)


@dataclass(frozen=True)
class OutputRecord:
    """What a writer wrote: the file and its description for report.json."""

    path: Path  # the written file, under its final name
    info: Mapping[str, Any]  # JSON-able; stored as report.json's outputs[<format>], plus file and bytes


class OutputWriter(Protocol):
    """One output format. Implementations are small classes registered by name (`register_writer`)."""

    @property
    def name(self) -> str:
        """Format name, as given to `--formats` and recorded in report.json (lower case, e.g. "tiff")."""
        ...

    @property
    def file_name(self) -> str:
        """The file written into the slide's output folder (e.g. "mask.tif")."""
        ...

    def write(self, context: OutputContext) -> OutputRecord:
        """Write `context.out_dir / file_name` atomically and describe it. Runs on a worker thread."""
        ...

    def is_current(self, report: Mapping[str, Any], options: OutputOptions) -> bool:
        """Whether the file recorded in a previous `report` was made as `options` now ask.

        Called on a rerun once the file is known to exist with its recorded size; a writer whose file
        does not depend on the options returns True.
        """
        ...
